"""What every trl_basics trainer adds to its TRL parent: the trick pipeline, run from the hooks of ``seams.py``.

The mixin never copies TRL's generation or loss code, and never names a trick: it reads what the pipeline's tricks
declare they need (:class:`~trl_basics.types.Requirements`). It
- builds a :class:`~trl_basics.Rollout` from each training round the parent scored, runs the pipeline, and writes
  this process's advantages back (``on_generation_round``);
- gives an evaluation round the reference log-probs a loss-stage trick needs (``on_evaluation_round``);
- adds the loss-stage terms and logs perplexity (``after_policy_loss``);
- saves the pipeline's state next to every checkpoint and checks it on resume.

With no trick flag set the pipeline is empty and the parent's advantages are left exactly as they are.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

import torch
from accelerate.utils import gather, gather_object

from . import checkpoints
from .callbacks import install_monitors
from .checkpoints import TRICK_STATE_FILE
from .guards import (
    GuardedRewardFunction,
    NonFiniteGradientGuard,
    check_padding,
    check_prompt_lengths,
    guard_reward_functions,
    guard_reward_tensor,
    warn_truncated_vllm_sampling,
)
from .metrics import (
    GUARD_SKIPPED_STEPS,
    KL_TO_REFERENCE,
    PERPLEXITY,
    REWARD_RAW_MEAN,
    REWARD_TRANSFORMED_MEAN,
    REWARD_TRANSFORMED_STD,
    log_distribution,
    reward_guard_metric,
)
from .pipeline import TrickPipeline
from .plugins import Registry, get_plugin_manager
from .seams import TRLSeams, parent_beta, vllm_http_weight_sync
from .trainer_setup import bind_trainer_arguments, coerce_config, model_name
from .types import LossInputs, Requirements, Rollout, TrickContext

logger = logging.getLogger(__name__)


def action_mask(batch: dict) -> torch.Tensor:
    """The completion tokens the policy chose: the completion mask without tool outputs (``tool_mask`` 0)."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


class TrickTrainerMixin(TRLSeams):
    """Runs the trick pipeline inside a TRL ``RLOOTrainer`` or ``GRPOTrainer`` subclass."""

    default_advantage_estimator: ClassVar[str | None] = None
    trl_parent: ClassVar[type]  # the TRL trainer this one extends
    trl_parent_config: ClassVar[type]  # and its config class, accepted in place of ours
    config_class: ClassVar[type]
    # Config fields outside the trick flags that the saved trick state (or what it means) depends on, recorded with
    # every checkpoint when the config has them; subclasses add theirs.
    state_settings: ClassVar[tuple[str, ...]] = ("beta", "num_generations")
    _rewards_per_func: torch.Tensor | None = None

    # --- set-up -------------------------------------------------------------------------------------------------

    def _init_parent(self, args: tuple, kwargs: dict, plugin_manager: Any = None) -> Any:
        """Build the trick pipeline, then run the TRL parent's constructor with our config; return the config.

        A plain parent config is turned into ours (``coerce_config``). TRL loads a reference model only when
        ``beta != 0``; a trick that needs one with ``beta == 0`` gets it: the parent sees a non-zero beta while it
        builds, and ``self.beta`` is restored afterwards.
        """
        arguments = bind_trainer_arguments(self.trl_parent.__init__, args, kwargs)
        config = arguments.get("args")
        if config is None:
            config = self.config_class(output_dir=f"{model_name(arguments['model'])}-{type(self).__name__}")
        config = coerce_config(config, self.config_class, self.trl_parent_config)
        arguments["args"] = config
        pm = plugin_manager if plugin_manager is not None else get_plugin_manager()
        self.trick_registry = Registry.from_plugin_manager(pm)
        pipeline = self.build_pipeline(config)
        needs_ref = pipeline.requirements.reference_model and config.beta == 0.0
        with parent_beta(config, 1.0 if needs_ref else config.beta), vllm_http_weight_sync(config):
            self.trl_parent.__init__(self, **arguments)
        self.beta = config.beta
        self.trick_pipeline = pipeline
        return config

    def _setup_tricks(self) -> None:
        self.deferred_metrics  # noqa: B018 - registers its callback now
        self._install_guards()

    def _install_guards(self) -> None:
        """Checked reward functions, skipped non-finite steps, and prompts that fit the context (see guards.py)."""
        check_padding(self.processing_class)
        warn_truncated_vllm_sampling(self.args)
        self.reward_funcs = guard_reward_functions(self.reward_funcs)
        self.gradient_guard = NonFiniteGradientGuard(
            on_skip=lambda total: self.metric_log()(GUARD_SKIPPED_STEPS, float(total))
        )
        self.add_callback(self.gradient_guard)
        install_monitors(self)  # the collapse alarm (config field `collapse_alarm`, collapse/* metrics), memory
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        check_prompt_lengths(
            None if getattr(self, "rollout_func", None) is not None else self.train_dataset,  # it tokenizes its own
            self.processing_class,
            getattr(config, "max_position_embeddings", None),
            self.args.max_completion_length,
        )

    def build_pipeline(self, args: Any = None) -> TrickPipeline:
        """A fresh pipeline exactly as this trainer configures it from ``args`` (default: its own config)."""
        args = self.args if args is None else args
        return TrickPipeline.from_args(
            self.pipeline_args(args), self.trick_registry, default_estimator=self.default_estimator(args)
        )

    def pipeline_args(self, args: Any) -> Any:
        """The trick flags the pipeline is built from (subclasses translate parent knobs here)."""
        return args

    def default_estimator(self, args: Any) -> str | None:
        return self.default_advantage_estimator

    @property
    def tricks_active(self) -> bool:
        """Whether any trick (or an estimator other than the parent's own) is on."""
        return bool(getattr(self, "trick_pipeline", None))

    @property
    def rewrites_advantages(self) -> bool:
        return self.tricks_active

    @property
    def requirements(self) -> Requirements:
        return self.trick_pipeline.requirements

    def trick_context(self) -> TrickContext:
        return TrickContext.from_accelerator(
            self.accelerator, global_step=self.state.global_step, log=self.metric_log()
        )

    # --- rewards ------------------------------------------------------------------------------------------------

    def on_rewards(self, rewards_per_func: torch.Tensor) -> None:
        """Keep the gathered rewards for the round; count unscorable ones per source (±inf becomes NaN here)."""
        self._rewards_per_func = rewards_per_func
        # The tensor is gathered, so its counts are global already; the checked functions count locally.
        tensor_counts = guard_reward_tensor(rewards_per_func, self.reward_funcs)
        local = [f.pop_counts() if isinstance(f, GuardedRewardFunction) else (0, 0) for f in self.reward_funcs]
        counts = torch.tensor(local, dtype=torch.float32, device=self.accelerator.device).reshape(-1, 2)
        totals = self.accelerator.reduce(counts, reduction="sum").tolist()
        log = self.metric_log()
        for name, (nonfinite, unscored), extra in zip(self.reward_func_names, totals, tensor_counts, strict=True):
            log(reward_guard_metric(name, "nonfinite"), nonfinite + extra)
            log(reward_guard_metric(name, "none"), unscored)

    def scalar_rewards(self) -> torch.Tensor:
        """The gathered scalar reward per completion, exactly as TRL forms it: weighted nansum, NaN if unscorable."""
        rewards_per_func = self._rewards_per_func
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        return rewards

    def rollout_rewards(self) -> torch.Tensor:
        return self.scalar_rewards()

    # --- generation round ---------------------------------------------------------------------------------------

    def forced_reference_logprobs(self) -> bool:
        return self.requirements.reference_logprobs

    def on_generation_round(self, out: dict, passes: list) -> dict:
        rollout = self.build_rollout(out, passes)
        ctx = self.trick_context()
        raw_rewards = rollout.rewards
        rollout = self.trick_pipeline.process(rollout, ctx)
        out["advantages"] = rollout.advantages.to(out["completion_ids"].device, torch.float32)
        self.store_rollout_extras(out, rollout)
        self.log_rollout(rollout, raw_rewards, ctx)
        return out

    def on_evaluation_round(self, out: dict) -> dict:
        """An evaluation round: the parent's advantages, plus what the loss-stage tricks read.

        The pipeline is not stepped in evaluation, so running statistics, baselines and the KL controller only ever
        see training rewards. The loss stage still runs on the evaluation batch: a trick that needs the reference
        log-probs in the loss gets them here, so the evaluation loss holds the same terms as the training loss.
        """
        if self.requirements.loss_reference_logprobs and out.get("ref_per_token_logps") is None:
            args = self.args
            batch_size = args.per_device_train_batch_size if self.model.training else args.per_device_eval_batch_size
            out["ref_per_token_logps"] = self.completion_logprobs(out, reference=True, batch_size=batch_size)
        return out

    def build_rollout(self, out: dict, passes: list) -> Rollout:
        completion_mask = action_mask(out)
        local_rows = out["completion_ids"].size(0)
        rank = self.accelerator.process_index
        logprobs, ref_logprobs = self.rollout_logprobs(out, passes)
        return Rollout(
            rewards=self.rollout_rewards(),
            num_generations=self.num_generations,
            process_slice=slice(rank * local_rows, (rank + 1) * local_rows),
            completion_mask=completion_mask,
            completion_lengths=gather(completion_mask.sum(dim=1)),
            logprobs=logprobs,
            ref_logprobs=ref_logprobs,
        )

    def rollout_logprobs(self, out: dict, passes: list) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def store_rollout_extras(self, out: dict, rollout: Rollout) -> None:
        """Add per-sample tensors the loss needs; TRL shuffles and splits every tensor in ``out`` consistently."""

    def log_rollout(self, rollout: Rollout, raw_rewards: torch.Tensor, ctx: TrickContext) -> None:
        # Tensors, not floats: the trick context reads them to the host with the step's other metrics, in one go.
        ctx.log(REWARD_RAW_MEAN, raw_rewards.nanmean())  # NaN when no completion could be scored
        rewards = rollout.rewards
        scorable = ~torch.isnan(rewards)
        count = scorable.sum()
        mean = torch.where(scorable, rewards, 0.0).sum() / count  # NaN when none is scorable
        squares = torch.where(scorable, (rewards - mean).square(), 0.0).sum()
        ctx.log(REWARD_TRANSFORMED_MEAN, mean)
        std = (squares / (count - 1).clamp(min=1)).sqrt()  # 0 for a single one
        ctx.log(REWARD_TRANSFORMED_STD, torch.where(count > 0, std, torch.nan))
        if rollout.ref_logprobs is not None and rollout.logprobs is not None:
            # KL of the sampling policy to the reference, per token (k1), whatever estimator the penalty uses.
            mask = rollout.completion_mask
            stats = ctx.reduce_sum(
                torch.stack([((rollout.logprobs - rollout.ref_logprobs) * mask).sum(), mask.sum().to(torch.float32)])
            )
            ctx.log(KL_TO_REFERENCE, stats[0] / stats[1].clamp(min=1.0))
        log_distribution(ctx, "advantages", rollout.advantages, rollout.completion_mask)
        if rollout.returns is not None:
            log_distribution(ctx, "returns", rollout.returns, rollout.completion_mask)

    # --- update -------------------------------------------------------------------------------------------------

    def after_policy_loss(self, model: Any, inputs: dict, loss: torch.Tensor, policy_pass: tuple) -> torch.Tensor:
        """Log perplexity and add the loss-stage tricks' terms to the policy loss of this micro-batch."""
        per_token_logps, entropies = policy_pass[0], policy_pass[1]
        mask = action_mask(inputs)
        ctx = self.trick_context()
        with torch.no_grad():
            # Perplexity of the sampled completions under the current policy: exp(-mean log-prob per token).
            stats = ctx.reduce_sum(torch.stack([(per_token_logps * mask).sum(), mask.sum().float()]))
            ctx.log(PERPLEXITY, torch.exp(-stats[0] / stats[1].clamp(min=1.0)))
        normalizer = self.loss_token_normalizer(inputs)
        extra = self.trick_pipeline.loss(
            LossInputs(
                logprobs=per_token_logps,
                completion_mask=mask,
                ref_logprobs=inputs.get("ref_per_token_logps"),
                old_logprobs=inputs.get("old_per_token_logps"),
                entropies=entropies,
                token_normalizer=normalizer,
            ),
            ctx,
        )
        if extra is not None:
            training = self.model.training
            if normalizer is None and training and self.loss_is_scaled_for_ga:
                extra = extra / self.current_gradient_accumulation_steps  # the parent scales its own loss the same way
            elif normalizer is not None and not self.loss_is_scaled_for_ga:
                extra = extra * self.current_gradient_accumulation_steps  # transformers divides the loss afterwards
            loss = loss + extra
        return loss

    def loss_token_normalizer(self, inputs: dict) -> torch.Tensor | None:
        """The loss-stage tricks' token-mean denominator during training: the active tokens of the accumulation
        window on every process over the number of processes (DDP averages the gradients), so their terms are token
        means over the window however it is split into micro-batches and processes. None in evaluation (no
        accumulation: each batch's own mean) and where the parent gives no token count."""
        if not (self.model.training and torch.is_grad_enabled()):
            return None
        window = self.window_token_count(inputs)
        return None if window is None else window / self.accelerator.num_processes

    # --- checkpoints ----------------------------------------------------------------------------------------------

    _trick_state_loaded_from: str | None = None

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None, ignore_keys_for_eval=None):
        """TRL's ``train``, with the checkpoint to resume from checked first (see ``trl_basics/checkpoints/``).

        ``True`` takes the newest *complete* checkpoint of ``output_dir``; a path must be a complete checkpoint of
        this trainer class, saved with the same settings, before anything is loaded.
        """
        lock = self.lock_output_dir()  # before anything is read or written: one run per output_dir
        try:
            checkpoint = checkpoints.resolve_resume(resume_from_checkpoint, self.args.output_dir)
            self._trick_state_loaded_from = None
            if checkpoint is not None:
                self.load_trick_state(checkpoint)  # first: it names a different trainer class
                problems = self.checkpoint_problems(checkpoint)
                if problems:
                    raise checkpoints.CheckpointError(
                        f"Cannot resume from {checkpoint}: {'; '.join(problems)}. Resume from an older complete "
                        "checkpoint, or start afresh in a new output_dir."
                    )
                if checkpoints.run_is_finished(checkpoint, self.args.max_steps):
                    return self.finish_from(checkpoint)
            return super().train(
                resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval
            )
        finally:
            if lock is not None:
                lock.release()

    def finish_from(self, checkpoint: str) -> Any:
        """Resume a run that had already reached ``max_steps`` (e.g. a job requeued after its last save): nothing
        is trained, the model holds the checkpoint's weights, ready to be saved or evaluated."""
        step = checkpoints.checkpoint_step(checkpoint)
        if self.is_deepspeed_enabled:
            raise checkpoints.CheckpointError(
                f"Cannot resume from {checkpoint}: it was saved at step {step} and max_steps is "
                f"{self.args.max_steps}, so that run is finished. Its model is in the checkpoint folder; to train "
                "longer, raise max_steps."
            )
        logger.warning(
            "%s was saved at step %d and max_steps is %d: the run is finished, so no step is trained; the model now "
            "holds that checkpoint's weights. To train longer, raise max_steps.",
            checkpoint,
            step,
            self.args.max_steps,
        )
        return self.restore_finished_run(checkpoint)

    def lock_output_dir(self) -> checkpoints.RunLock | None:
        """The saving process locks ``output_dir`` for the run (``checkpoints/lock.py``); all processes hear a no."""
        lock, refusal = None, None
        if self.args.should_save:
            try:
                lock = checkpoints.RunLock(self.args.output_dir).acquire()
            except checkpoints.OutputDirInUseError as err:
                refusal = str(err)
        if self.accelerator.num_processes > 1:
            refusal = next((text for text in gather_object([refusal]) if text), None)
        if refusal is not None:
            if lock is not None:
                lock.release()
            raise checkpoints.OutputDirInUseError(refusal)
        return lock

    def checkpoint_problems(self, checkpoint: str) -> list[str]:
        """What this trainer needs in a checkpoint beyond TRL's files and the trick state (PPO-max: the critic)."""
        return []

    def checkpoint_settings(self) -> dict[str, Any]:
        estimator = self.trick_pipeline.estimator
        return checkpoints.run_settings(
            self.args, estimator.name if estimator is not None else None, self.checkpoint_extra_settings()
        )

    @classmethod
    def declared_state_settings(cls) -> tuple[str, ...]:
        """The ``state_settings`` this trainer class and its bases declare."""
        return tuple(dict.fromkeys(name for klass in cls.__mro__ for name in vars(klass).get("state_settings", ())))

    def checkpoint_extra_settings(self) -> tuple[str, ...]:
        """The trainer's declared ``state_settings`` and those of the pipeline's active components."""
        return tuple(dict.fromkeys([*self.declared_state_settings(), *self.trick_pipeline.state_settings]))

    def write_checkpoint_files(self, folder: str) -> None:
        """trl_basics' own files of a checkpoint, each written atomically (subclasses add theirs)."""
        if self.args.should_save:
            document = checkpoints.trick_state_document(
                type(self),
                self.checkpoint_settings(),
                self.trick_pipeline.state_dict(),
                self.trick_pipeline.state_dependencies(),
                num_processes=self.accelerator.num_processes,
            )
            checkpoints.write_json(os.path.join(folder, TRICK_STATE_FILE), document)

    def load_trick_state(self, checkpoint: str) -> None:
        plan = checkpoints.plan_trick_state(
            checkpoint,
            trainer_class=type(self),
            settings=self.checkpoint_settings(),
            stateful=sorted(self.trick_pipeline.state_dict()),
            reset=self.args.resume_reset_changed_state,
            # compared with the checkpoint's on the main process only: one warning per run
            num_processes=self.accelerator.num_processes if self.accelerator.is_main_process else None,
        )
        if plan.state is not None:
            fresh = self.trick_pipeline.state_dict()
            try:
                self.trick_pipeline.load_state_dict(plan.state, reset=plan.reset)
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

    def load_checkpoint_extras(self, checkpoint: str) -> None:
        if checkpoint != self._trick_state_loaded_from:
            self.load_trick_state(checkpoint)
