"""What every trl_basics trainer adds to its TRL parent: the trick pipeline, hooked in at TRL's stable seams.

The mixin never copies TRL's generation or loss code. It
- records the gathered reward tensor in ``_calculate_rewards`` and the log-probs TRL computes anyway in
  ``_get_per_token_logps_and_entropies`` (passively: the parent's outputs are returned unchanged);
- post-processes ``_generate_and_score_completions``: builds a :class:`~trl_basics.Rollout` from the parent's output,
  runs the pipeline, and writes this process's advantages back;
- wraps ``_compute_loss`` to add the loss-stage terms and log perplexity;
- saves and restores the pipeline's state next to every checkpoint.

With no trick flag set the pipeline is empty and the parent's advantages are left exactly as they are.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Any, ClassVar

import torch
from accelerate.utils import gather

from . import checkpoints
from .callbacks import install_monitors
from .checkpoints import TRICK_STATE_FILE
from .config import TrickArguments
from .deferred_metrics import DeferredMetrics
from .guards import (
    GuardedRewardFunction,
    NonFiniteGradientGuard,
    check_dataset,
    check_padding,
    check_prompt_lengths,
    check_reward_sources,
    guard_reward_functions,
    guard_reward_tensor,
)
from .pipeline import TrickPipeline
from .plugins import Registry, get_plugin_manager
from .types import LossInputs, Rollout, TrickContext

logger = logging.getLogger(__name__)

# Keyword inputs TRL forwards to the model for multimodal batches; passed through unchanged.
FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def bind_trainer_arguments(parent_init, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The parent constructor's arguments by name, so ``args`` can be replaced whether passed by position or not."""
    bound = inspect.signature(parent_init).bind(None, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(arguments)))  # `self`
    check_reward_sources(arguments.get("reward_funcs"))
    check_dataset(arguments.get("train_dataset"), "train_dataset")  # before any model is loaded
    check_dataset(arguments.get("eval_dataset"), "eval_dataset")
    return arguments


def model_name(model: Any) -> str:
    if isinstance(model, str):
        return model.rstrip("/").split("/")[-1]
    return getattr(getattr(model, "config", None), "_name_or_path", "model").rstrip("/").split("/")[-1]


def coerce_config(args: Any, config_cls: type, parent_cls: type) -> Any:
    """Turn a plain TRL parent config (e.g. ``trl.GRPOConfig``) into ``config_cls``, keeping what the user set.

    Fields the user left at the parent's default take ``config_cls``'s default, so our presets apply; fields the
    user changed keep their value. Fields derived in ``__post_init__`` are recomputed.
    """
    if isinstance(args, config_cls):
        return args
    if not isinstance(args, parent_cls):
        raise TypeError(f"args must be a {config_cls.__name__} or a {parent_cls.__name__}, got {type(args).__name__}")
    changed = {}
    for f in dataclasses.fields(parent_cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        value = getattr(args, f.name)
        if default is dataclasses.MISSING or value != default:
            changed[f.name] = value
    # Derived from steps_per_generation in the parent's __post_init__; passing both is an error there.
    changed.pop("generation_batch_size", None)
    return config_cls(**changed)


@contextmanager
def parent_beta(args: Any, value: float):
    """Let the parent's ``__init__`` see ``beta=value`` (so it loads a reference model), then restore ``args``."""
    saved = args.beta
    args.beta = value
    try:
        yield
    finally:
        args.beta = saved


@contextmanager
def single_generation_allowed(config: Any):
    """Run the parent config's ``__post_init__`` with ``num_generations=1`` let through.

    TRL's configs refuse fewer than 2 generations because their own advantages need a group; estimators with a
    baseline that does not come from the group (moving average, returns, GAE) work with one sample per prompt.
    """
    requested = config.num_generations
    if requested == 1:
        config.num_generations = 2
    try:
        yield
    finally:
        if requested == 1:
            config.num_generations = 1


class TrickTrainerMixin:
    """Runs the trick pipeline inside a TRL ``RLOOTrainer`` or ``GRPOTrainer`` subclass."""

    default_advantage_estimator: ClassVar[str | None] = None
    trl_parent: ClassVar[type]  # the TRL trainer this one extends
    trl_parent_config: ClassVar[type]  # and its config class, accepted in place of ours
    config_class: ClassVar[type]
    _logps_record: list | None = None
    _rewards_per_func: torch.Tensor | None = None

    # --- set-up -------------------------------------------------------------------------------------------------

    def _init_parent(self, args: tuple, kwargs: dict) -> Any:
        """Run the TRL parent's constructor with our config; return the config.

        A plain parent config is turned into ours (``coerce_config``). TRL loads a reference model only when
        ``beta != 0``; KL shaping with ``beta == 0`` needs one too, so the parent sees a non-zero beta while it
        builds, and ``self.beta`` is restored afterwards.
        """
        arguments = bind_trainer_arguments(self.trl_parent.__init__, args, kwargs)
        config = arguments.get("args")
        if config is None:
            config = self.config_class(output_dir=f"{model_name(arguments['model'])}-{type(self).__name__}")
        config = coerce_config(config, self.config_class, self.trl_parent_config)
        arguments["args"] = config
        needs_ref = config.kl_coef is not None and config.kl_coef > 0
        with parent_beta(config, 1.0 if needs_ref and config.beta == 0.0 else config.beta):
            self.trl_parent.__init__(self, **arguments)
        self.beta = config.beta
        return config

    def _setup_tricks(self, plugin_manager: Any = None) -> None:
        pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        self.trick_registry = Registry.from_plugin_manager(pm)
        self.trick_pipeline = self.build_pipeline()
        # KL shaping needs reference log-probs, which the parent computes only when its beta is non-zero.
        self._kl_shaping = next((t for t in self.trick_pipeline.tricks if t.name == "kl_shaping"), None)
        self.deferred_metrics  # noqa: B018 - registers its callback now
        self._install_guards()

    def _install_guards(self) -> None:
        """Checked reward functions, skipped non-finite steps, and prompts that fit the context (see guards.py)."""
        check_padding(self.processing_class)
        self.reward_funcs = guard_reward_functions(self.reward_funcs)
        self.gradient_guard = NonFiniteGradientGuard(
            on_skip=lambda total: self._metrics["train"]["guard/skipped_steps"].append(float(total))
        )
        self.add_callback(self.gradient_guard)
        install_monitors(self)  # the collapse alarm (config field `collapse_alarm`, collapse/* metrics), memory
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        check_prompt_lengths(
            self.train_dataset,
            self.processing_class,
            getattr(config, "max_position_embeddings", None),
            self.args.max_completion_length,
        )

    def build_pipeline(self) -> TrickPipeline:
        """A fresh pipeline exactly as this trainer configures it (also used to replay a round in tests)."""
        return TrickPipeline.from_args(
            self._pipeline_args(), self.trick_registry, default_estimator=self._default_estimator()
        )

    def _pipeline_args(self) -> Any:
        """The trick flags the pipeline is built from (subclasses translate parent knobs here)."""
        return self.args

    def _default_estimator(self) -> str | None:
        return self.default_advantage_estimator

    @property
    def deferred_metrics(self) -> DeferredMetrics:
        """The metric sink whose tensors are read to the host once per optimizer step, all together (made and
        registered as a callback on first use, also by subclasses that set their pipeline up themselves)."""
        deferred = self.__dict__.get("_deferred_metrics")
        if deferred is None:
            deferred = self._deferred_metrics = DeferredMetrics()
            self.add_callback(deferred)
        return deferred

    @property
    def tricks_active(self) -> bool:
        return bool(self.trick_pipeline)

    def _trick_context(self) -> TrickContext:
        mode = "train" if self.model.training else "eval"
        log = self.deferred_metrics.sink(self._metrics[mode], defer=mode == "train")
        return TrickContext.from_accelerator(self.accelerator, global_step=self.state.global_step, log=log)

    # --- passive recording at TRL's seams -----------------------------------------------------------------------

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._logps_record is not None:
            self._logps_record.append(out)
        return out

    @contextmanager
    def _recording_logps(self):
        self._logps_record = []
        try:
            yield self._logps_record
        finally:
            self._logps_record = None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func
        self._log_reward_guards(rewards_per_func)
        return rewards_per_func

    def _log_reward_guards(self, rewards_per_func: torch.Tensor) -> None:
        """Count unscorable rewards per source; ±inf from a reward model or async function becomes NaN here."""
        # The tensor is gathered, so its counts are global already; the checked functions count locally.
        tensor_counts = guard_reward_tensor(rewards_per_func, self.reward_funcs)
        local = [f.pop_counts() if isinstance(f, GuardedRewardFunction) else (0, 0) for f in self.reward_funcs]
        counts = torch.tensor(local, dtype=torch.float32, device=self.accelerator.device).reshape(-1, 2)
        totals = self.accelerator.reduce(counts, reduction="sum").tolist()
        mode = "train" if self.model.training else "eval"
        for name, (nonfinite, unscored), extra in zip(self.reward_func_names, totals, tensor_counts, strict=True):
            self._metrics[mode][f"reward_guard/{name}/nonfinite"].append(nonfinite + extra)
            self._metrics[mode][f"reward_guard/{name}/none"].append(unscored)

    def _scalar_rewards(self) -> torch.Tensor:
        """The gathered scalar reward per completion, exactly as TRL forms it: weighted nansum, NaN if unscorable."""
        rewards_per_func = self._rewards_per_func
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        return rewards

    # --- generation round ---------------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs):
        if not self.tricks_active:
            return super()._generate_and_score_completions(inputs)  # no trick: the parent's advantages stand
        if not self.model.training:
            return self._generate_and_score_for_eval(inputs)
        with self._generation_beta(), self._recording_logps() as recorded:
            out = super()._generate_and_score_completions(inputs)
        rollout = self._build_rollout(out, recorded)
        ctx = self._trick_context()
        raw_rewards = rollout.rewards
        rollout = self.trick_pipeline.process(rollout, ctx)
        out["advantages"] = rollout.advantages.to(out["completion_ids"].device, torch.float32)
        self._store_rollout_extras(out, rollout)
        self._log_rollout(rollout, raw_rewards, ctx)
        return out

    def _generate_and_score_for_eval(self, inputs):
        """An evaluation round: the parent's advantages, plus what the loss-stage tricks read.

        The pipeline is not stepped in evaluation, so running statistics, baselines and the KL controller only ever
        see training rewards. The loss stage still runs on the evaluation batch: with ``kl_placement="loss"`` the
        reference log-probs are computed here, so the evaluation loss holds the same KL term as the training loss.
        """
        out = super()._generate_and_score_completions(inputs)
        if self._loss_needs_ref_logprobs() and out.get("ref_per_token_logps") is None:
            out["ref_per_token_logps"] = self._reference_logprobs(out)
        return out

    def _loss_needs_ref_logprobs(self) -> bool:
        return self._kl_shaping is not None and self._kl_shaping.placement == "loss"

    @torch.no_grad()
    def _reference_logprobs(self, out: dict) -> torch.Tensor:
        """Per-token log-probs of the completions under the reference policy (the ref model, or the PEFT base)."""
        from trl.trainer.utils import use_adapter

        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        forward = {key: out[key] for key in FORWARD_KEYS if key in out}
        args = self.args
        batch_size = args.per_device_train_batch_size if self.model.training else args.per_device_eval_batch_size
        if self.ref_model is not None:
            model, adapter = self.ref_model, nullcontext()
        else:  # PEFT: the base model with the adapter off, or the frozen "ref" copy of a pre-trained adapter
            model = self.model
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        with adapter:
            logprobs, _, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, out["completion_ids"].size(1), batch_size=batch_size, **forward
            )
        return logprobs

    @contextmanager
    def _generation_beta(self):
        """Hold the parent's ``beta`` non-zero during generation when KL shaping needs reference log-probs."""
        if self._kl_shaping is None or self.beta != 0.0:
            yield
            return
        self.beta = 1.0  # any non-zero value: the parent only tests beta != 0 before computing ref log-probs
        try:
            yield
        finally:
            self.beta = 0.0

    def _build_rollout(self, out: dict, recorded: list) -> Rollout:
        completion_mask = out["completion_mask"]
        if "tool_mask" in out:
            completion_mask = completion_mask * out["tool_mask"]
        local_rows = out["completion_ids"].size(0)
        rank = self.accelerator.process_index
        logprobs, ref_logprobs = self._rollout_logprobs(out, recorded)
        return Rollout(
            rewards=self._rollout_rewards(),
            num_generations=self.num_generations,
            process_slice=slice(rank * local_rows, (rank + 1) * local_rows),
            completion_mask=completion_mask,
            completion_lengths=gather(completion_mask.sum(dim=1)),
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
        )

    def _rollout_rewards(self) -> torch.Tensor:
        return self._scalar_rewards()

    def _rollout_logprobs(self, out: dict, recorded: list) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def _store_rollout_extras(self, out: dict, rollout: Rollout) -> None:
        """Add per-sample tensors the loss needs; TRL shuffles and splits every tensor in ``out`` consistently."""

    def _log_rollout(self, rollout: Rollout, raw_rewards: torch.Tensor, ctx: TrickContext) -> None:
        # Tensors, not floats: the trick context reads them to the host with the step's other metrics, in one go.
        ctx.log("reward_raw/mean", raw_rewards.nanmean())  # NaN when no completion could be scored
        rewards = rollout.rewards
        scorable = ~torch.isnan(rewards)
        count = scorable.sum()
        mean = torch.where(scorable, rewards, 0.0).sum() / count  # NaN when none is scorable
        squares = torch.where(scorable, (rewards - mean).square(), 0.0).sum()
        ctx.log("reward_transformed/mean", mean)
        std = (squares / (count - 1).clamp(min=1)).sqrt()  # 0 for a single one
        ctx.log("reward_transformed/std", torch.where(count > 0, std, torch.nan))
        if rollout.ref_logprobs is not None and rollout.logprobs is not None:
            # KL of the sampling policy to the reference, per token (k1), whatever estimator the penalty uses.
            mask = rollout.completion_mask
            stats = ctx.reduce_sum(
                torch.stack([((rollout.logprobs - rollout.ref_logprobs) * mask).sum(), mask.sum().to(torch.float32)])
            )
            ctx.log("kl_to_ref/k1_token_mean", stats[0] / stats[1].clamp(min=1.0))
        self._log_distribution(ctx, "advantages", rollout.advantages, rollout.completion_mask)
        if rollout.returns is not None:
            self._log_distribution(ctx, "returns", rollout.returns, rollout.completion_mask)

    def _log_distribution(self, ctx: TrickContext, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        """Global mean/std/min/max of a (B,) or (B, T) tensor over active entries, in one reduce and one gather.

        No host read: masked reductions instead of boolean indexing (whose size the host must know).
        """
        active = mask.bool() if values.dim() == 2 else mask.bool().any(dim=1)
        values = values.float()
        picked = torch.where(active, values, 0.0)
        totals = ctx.reduce_sum(torch.stack([picked.sum(), (picked * picked).sum(), active.sum().float()]))
        count = totals[2].clamp(min=1.0)
        mean = totals[0] / count
        var = (totals[1] / count - mean * mean).clamp(min=0.0)
        big = torch.finfo(values.dtype).max
        # With no active entry the extremes are +big (min) and -big (max).
        extremes = ctx.gather(
            torch.stack([torch.where(active, values, big).min(), -torch.where(active, values, -big).max()]).unsqueeze(0)
        )
        ctx.log(f"{name}/mean", mean)
        ctx.log(f"{name}/std", var.sqrt())
        ctx.log(f"{name}/min", extremes[:, 0].min())
        ctx.log(f"{name}/max", -extremes[:, 1].min())

    # --- update ---------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        with self._recording_logps() as recorded:
            loss = self._policy_loss(model, inputs)
        per_token_logps, entropies = recorded[0][0], recorded[0][1]
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        ctx = self._trick_context()
        with torch.no_grad():
            # Perplexity of the sampled completions under the current policy: exp(-mean log-prob per token).
            stats = ctx.reduce_sum(torch.stack([(per_token_logps * mask).sum(), mask.sum().float()]))
            ctx.log("perplexity", torch.exp(-stats[0] / stats[1].clamp(min=1.0)))
        extra = self.trick_pipeline.loss(
            LossInputs(
                logprobs=per_token_logps,
                completion_mask=mask,
                ref_logprobs=inputs.get("ref_per_token_logps"),
                old_logprobs=inputs.get("old_per_token_logps"),
                entropies=entropies,
            ),
            ctx,
        )
        if extra is not None:
            if self.loss_is_scaled_for_ga and self.model.training:
                extra = extra / self.current_gradient_accumulation_steps  # the parent scales its own loss the same way
            loss = loss + extra
        return loss

    def _policy_loss(self, model, inputs):
        return super()._compute_loss(model, inputs)

    # --- checkpoints --------------------------------------------------------------------------------------------

    _trick_state_loaded_from: str | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval=None):
        """TRL's ``train``, with the checkpoint to resume from checked first (see ``trl_basics/checkpoints.py``).

        ``True`` takes the newest *complete* checkpoint of ``output_dir``; a path must be a complete checkpoint of
        this trainer class, saved with the same settings, before anything is loaded.
        """
        checkpoint = checkpoints.resolve_resume(resume_from_checkpoint, self.args.output_dir)
        self._trick_state_loaded_from = None
        if checkpoint is not None:
            self._load_trick_state(checkpoint)  # first: it names a different trainer class
            problems = self._checkpoint_problems(checkpoint)
            if problems:
                raise checkpoints.CheckpointError(
                    f"Cannot resume from {checkpoint}: {'; '.join(problems)}. Resume from an older complete "
                    "checkpoint, or start afresh in a new output_dir."
                )
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval)

    def _checkpoint_problems(self, checkpoint: str) -> list[str]:
        """What this trainer needs in a checkpoint beyond TRL's files and the trick state (PPO-max: the critic)."""
        return []

    def _checkpoint_settings(self) -> dict[str, Any]:
        estimator = self.trick_pipeline.estimator
        return checkpoints.run_settings(self.args, estimator.name if estimator is not None else None)

    def _save_checkpoint(self, model, trial):
        # The marker goes first and comes back last; TRL's rotation waits until our files are on disk.
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            checkpoints.begin_checkpoint(folder)
        with checkpoints.rotation_deferred(self.args) as save_total_limit:
            super()._save_checkpoint(model, trial)
            self._save_checkpoint_files(folder)
        self.accelerator.wait_for_everyone()  # every process has written its part
        if self.args.should_save:
            checkpoints.mark_complete(folder, self.state.global_step)
            checkpoints.rotate(run_dir, folder, save_total_limit, self.state.best_model_checkpoint)

    def _save_checkpoint_files(self, folder: str) -> None:
        """trl_basics' own files of a checkpoint, each written atomically (subclasses add theirs)."""
        if self.args.should_save:
            document = checkpoints.trick_state_document(
                type(self), self._checkpoint_settings(), self.trick_pipeline.state_dict()
            )
            checkpoints.write_json(os.path.join(folder, TRICK_STATE_FILE), document)

    def _load_trick_state(self, checkpoint: str) -> None:
        state = checkpoints.read_trick_state(
            checkpoint,
            trainer_class=type(self),
            settings=self._checkpoint_settings(),
            stateful=sorted(self.trick_pipeline.state_dict()),
            reset=self.args.resume_reset_changed_state,
        )
        if state is not None:
            fresh = self.trick_pipeline.state_dict()
            try:
                self.trick_pipeline.load_state_dict(state)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                self.trick_pipeline.load_state_dict(fresh)
                if not self.args.resume_reset_changed_state:
                    raise checkpoints.load_error(checkpoint, err) from None
                logger.warning(
                    "resume_reset_changed_state=True: the trick state in %s does not fit this run (%s); it starts "
                    "fresh",
                    checkpoint,
                    err,
                )
        self._trick_state_loaded_from = checkpoint

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and checkpoint != self._trick_state_loaded_from:
            self._load_trick_state(checkpoint)


def trick_field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrickArguments)}
