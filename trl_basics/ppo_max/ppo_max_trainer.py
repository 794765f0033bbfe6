"""PPO-max (Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO") on TRL's GRPOTrainer.

TRL 1.16 has no PPO trainer. This one keeps GRPO's generation (transformers, vLLM, tools), reference model, reward
functions, accelerate set-up and token-level clipped loss, and adds what PPO needs around them:

- a separate critic (``AutoModelForTokenClassification``, one output) with its own AdamW, prepared by accelerate
  (DDP) or its own DeepSpeed engine, updated on every micro-batch with the clipped value loss and stepped at
  gradient-accumulation boundaries;
- old values V(s_t) from the critic in each generation round, put into the rollout so that the trick pipeline's
  ``gae`` estimator turns the (normalized, clipped, KL-shaped) rewards into GAE advantages and returns;
- optional critic warm-up (actor frozen), a pretraining-loss mix (ptx), checkpointing of the critic and its
  optimizer, value monitors and the collapse alarm.

Reward normalization and clipping, the token-level KL penalty and the entropy bonus are the shared trick plugins.
GRPO's own KL term (``beta``, k3 in the loss) stays off: the KL is in the reward.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from contextlib import nullcontext
from typing import Any, ClassVar

import torch
from accelerate.utils import DistributedType, is_peft_model
from transformers import PreTrainedModel, TrainerCallback
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id

from .. import checkpoints
from ..functional import clipped_value_loss, explained_variance
from ..grpo_base import GRPOTrickTrainer
from ..types import Rollout, TrickContext
from .critic import (
    critic_values,
    disable_dropout,
    load_value_model,
    value_model_from_causal_lm,
    with_trainable_value_head,
)
from .ppo_max_config import PPOMaxConfig

logger = logging.getLogger(__name__)

CRITIC_DIR = "critic"
CRITIC_OPTIMIZER_FILE = "optimizer.pt"
CRITIC_DEEPSPEED_TAG = "deepspeed"


class _FreezeActorCallback(TrainerCallback):
    """Critic warm-up: drop the actor's gradients before its optimizer step; AdamW leaves it and its state as is."""

    def __init__(self, trainer: PPOMaxTrainer) -> None:
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.trainer.actor_frozen:
            for param in self.trainer.model.parameters():
                param.grad = None
        return control


class PPOMaxTrainer(GRPOTrickTrainer):
    """``trl.GRPOTrainer`` turned into PPO-max: a critic, GAE advantages and the PPO-max tricks.

    Accepts a ``trl_basics.PPOMaxConfig`` or a plain ``trl.GRPOConfig`` (fields left at GRPO's defaults take
    PPO-max's), the constructor arguments of ``trl.GRPOTrainer``, and:

    Args:
        critic_model: The critic's starting point, overriding ``args.critic_model_path``/``critic_init``: a model id or
            path (reward model or causal LM), or a ready ``*ForTokenClassification`` model with one output.
        critic_peft_config: A ``peft.PeftConfig`` for the critic (the value head ``score`` is trained in full).
        ptx_dataset: Plain texts for the ptx term (a ``datasets.Dataset`` with column ``args.ptx_text_field``, or a
            list of strings); needs ``args.ptx_coef > 0``.
        plugin_manager: The pluggy manager tricks come from (default: a fresh one).
    """

    _tag_names: ClassVar[list[str]] = ["trl", "ppo", "ppo-max", "trl_basics"]
    _name = "PPO-max (trl_basics)"
    _paper: ClassVar[dict[str, str]] = {
        "title": "Secrets of RLHF in Large Language Models Part I: PPO",
        "id": "2307.04964",
    }
    config_class = PPOMaxConfig
    default_advantage_estimator = "gae"

    def __init__(
        self,
        *args: Any,
        critic_model: str | PreTrainedModel | None = None,
        critic_peft_config: Any = None,
        ptx_dataset: Any = None,
        plugin_manager: Any = None,
        **kwargs: Any,
    ) -> None:
        self._init_parent(args, kwargs)  # beta stays 0: GRPO's own KL term in the loss stays off
        # The critic first: it looks for a reward model among the reward functions as the parent set them up.
        self._setup_critic(critic_model, critic_peft_config)
        self._setup_tricks(plugin_manager)
        self._setup_ptx(ptx_dataset)
        self.add_callback(_FreezeActorCallback(self))

    # --- critic set-up --------------------------------------------------------------------------------------------

    def _critic_source(self, critic_model: str | PreTrainedModel | None) -> tuple[str | PreTrainedModel, str]:
        """The critic's starting point and a word for where it came from (``reward_model``/``policy``/``given``)."""
        if critic_model is not None:
            return critic_model, "given"
        if self.args.critic_model_path is not None:
            return self.args.critic_model_path, "given"
        if self.args.critic_init == "reward_model":
            for reward_func in self.reward_funcs:
                if isinstance(reward_func, PreTrainedModel):
                    return get_config_model_id(reward_func.config), "reward_model"
            logger.warning(
                "critic_init='reward_model' but every reward is a plain function: the critic is initialised from the "
                "policy instead (set critic_init='policy' to silence this, or critic_model_path to a reward model)."
            )
        return get_config_model_id(self.model.config), "policy"

    def _setup_critic(self, critic_model: str | PreTrainedModel | None, peft_config: Any) -> None:
        args = self.args
        if self.is_fsdp_enabled:
            raise NotImplementedError(
                "PPOMaxTrainer prepares its critic with DDP or its own DeepSpeed engine; FSDP is not supported. Use "
                "DeepSpeed ZeRO-3 (examples/accelerate/deepspeed_zero3.yaml) for sharded training."
            )
        source, self.critic_init_source = self._critic_source(critic_model)
        if isinstance(source, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            init_kwargs.pop("dtype", None)
            init_kwargs.pop("torch_dtype", None)
            init_kwargs.pop("device_map", None)
            init_kwargs.pop("quantization_config", None)
            try:
                critic = load_value_model(
                    source, dtype=self.model.dtype, trust_remote_code=args.trust_remote_code, **init_kwargs
                )
            except (OSError, ValueError):
                if self.critic_init_source != "policy" or is_peft_model(self.model):
                    raise
                # A policy passed as an object that was never saved: copy its backbone instead of reloading it.
                critic = value_model_from_causal_lm(self.accelerator.unwrap_model(self.model))
        else:
            critic = source
            base = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
            if not type(base).__name__.endswith("ForTokenClassification") or base.config.num_labels != 1:
                raise TypeError(
                    f"critic_model must be a *ForTokenClassification model with num_labels=1, got "
                    f"{type(base).__name__}; pass a path instead to load a reward model or causal LM as a critic"
                )
            disable_dropout(critic)
        if args.gradient_checkpointing:
            critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        if peft_config is not None:
            from peft import get_peft_model

            if args.gradient_checkpointing:
                critic.enable_input_require_grads()
            critic = get_peft_model(critic, with_trainable_value_head(peft_config))
        critic.train()
        trainable = [param for param in critic.parameters() if param.requires_grad]
        optimizer = torch.optim.AdamW(
            trainable,
            lr=args.critic_learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        if self.is_deepspeed_enabled:
            self.critic, self.critic_optimizer = self._prepare_critic_deepspeed(critic, optimizer)
        else:
            # DDP (or plain device placement); the optimizer stays a torch optimizer stepped by hand at GA boundaries.
            self.critic = self.accelerator.prepare_model(critic)
            self.critic_optimizer = optimizer

    def _prepare_critic_deepspeed(self, critic, optimizer):
        """The critic's own DeepSpeed engine (accelerate drives one engine, the policy's), from the policy's DS config.

        The engine counts micro-batches itself: ``backward`` scales by 1/GA and ``step`` updates only at boundaries.
        """
        import copy

        import deepspeed

        config = copy.deepcopy(self.accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        args = self.args
        max_norm = args.max_grad_norm if args.critic_max_grad_norm is None else args.critic_max_grad_norm
        config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
        config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
        config["train_batch_size"] = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * self.accelerator.num_processes
        )
        config["gradient_clipping"] = max_norm
        config["zero_allow_untested_optimizer"] = True  # our torch AdamW
        config.setdefault("bf16", {})["enabled"] = bool(args.bf16)
        config.setdefault("fp16", {})["enabled"] = bool(args.fp16)
        zero = config.setdefault("zero_optimization", {})
        hidden_size = getattr(critic.config, "hidden_size", None)
        for key, value in {
            "reduce_bucket_size": hidden_size * hidden_size if hidden_size else 5e8,
            "stage3_param_persistence_threshold": 10 * hidden_size if hidden_size else 1e5,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size) if hidden_size else 5e8,
        }.items():
            if zero.get(key) == "auto":
                zero[key] = value
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=critic, optimizer=optimizer, config=config)
        return engine, ds_optimizer

    @property
    def _critic_is_deepspeed(self) -> bool:
        return self.accelerator.distributed_type == DistributedType.DEEPSPEED

    @property
    def actor_frozen(self) -> bool:
        """True during critic warm-up: the policy does not move while the critic pre-trains."""
        return self.model.training and self.state.global_step < self.args.critic_warmup_steps

    # --- ptx -------------------------------------------------------------------------------------------------------

    def _setup_ptx(self, ptx_dataset: Any) -> None:
        args = self.args
        self._ptx_texts: list[str] | None = None
        self._ptx_permutations: dict[int, list[int]] = {}
        if ptx_dataset is None:
            if args.ptx_coef > 0:
                raise ValueError(f"ptx_coef={args.ptx_coef} needs plain texts: pass ptx_dataset to PPOMaxTrainer")
            return
        if args.ptx_coef == 0:
            raise ValueError("ptx_dataset was given but ptx_coef is 0, so it would be ignored; set ptx_coef > 0")
        if isinstance(ptx_dataset, (list, tuple)):
            texts = [str(text) for text in ptx_dataset]
        else:
            if args.ptx_text_field not in ptx_dataset.column_names:
                raise ValueError(
                    f"ptx_dataset has no column {args.ptx_text_field!r} (columns: {ptx_dataset.column_names}); set "
                    "ptx_text_field"
                )
            texts = list(ptx_dataset[args.ptx_text_field])
        if not texts:
            raise ValueError("ptx_dataset is empty")
        self._ptx_texts = texts

    def _ptx_batch(self) -> list[str]:
        """This micro-batch's ptx texts: a function of (global step, micro-step, rank), so resuming draws the same.

        Draw k of the whole run reads position k of an endless sequence of seeded permutations of the texts.
        """
        texts = self._ptx_texts
        size = self.args.ptx_batch_size or self.args.per_device_train_batch_size
        accumulation = self.args.gradient_accumulation_steps
        micro = self._step % accumulation
        draw = (self.state.global_step * accumulation + micro) * self.accelerator.num_processes
        first = (draw + self.accelerator.process_index) * size
        batch = []
        for k in range(first, first + size):
            epoch, position = divmod(k, len(texts))
            if epoch not in self._ptx_permutations:
                generator = torch.Generator().manual_seed(self.args.seed + epoch)
                self._ptx_permutations = {epoch: torch.randperm(len(texts), generator=generator).tolist()}
            batch.append(texts[self._ptx_permutations[epoch][position]])
        return batch

    def _ptx_loss(self, model) -> torch.Tensor:
        """Mean next-token NLL of the policy on plain texts (paper Eq. 17), without the sampling temperature."""
        encoded = self._tokenizer(
            self._ptx_batch(),
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.args.ptx_max_length,
            padding_side="right",  # the first token of every text is then never predicted from a pad position
        ).to(self.accelerator.device)
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        # Through the unwrapped module: under DDP the policy's single backward then reduces both terms once.
        policy = self.accelerator.unwrap_model(model) if not self._critic_is_deepspeed else model
        with self.accelerator.autocast():
            out = policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        return out.loss

    # --- generation round -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _old_values(self, out: dict) -> torch.Tensor:
        """V_old(s_t) of the sampled completions, (B, T), 0 at inactive positions. No gradient."""
        critic = self.critic if self._critic_is_deepspeed else self.accelerator.unwrap_model(self.critic)
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        with (
            self.accelerator.autocast(),
            disable_gradient_checkpointing(critic, self.args.gradient_checkpointing_kwargs),
        ):
            values = critic_values(
                critic,
                input_ids,
                attention_mask,
                out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return values * out["completion_mask"]

    def _build_rollout(self, out: dict, recorded: list) -> Rollout:
        rollout = super()._build_rollout(out, recorded)
        return rollout.replace(values=self._old_values(out))

    def _store_rollout_extras(self, out: dict, rollout: Rollout) -> None:
        if rollout.returns is None:
            raise ValueError(
                f"advantage_estimator={self.trick_pipeline.estimator.name!r} sets no returns, so the critic has no "
                "target. PPO-max uses 'gae'; for a critic-free method use ReinforcePlusPlusTrainer or RLOOTrainer."
            )
        out["old_values"] = rollout.values.float()
        out["returns"] = rollout.returns.float()

    def _log_rollout(self, rollout: Rollout, raw_rewards: torch.Tensor, ctx: TrickContext) -> None:
        super()._log_rollout(rollout, raw_rewards, ctx)
        mask = rollout.completion_mask
        # How much of the return variance the critic explained *before* it trained on this batch (Schulman 2016).
        ev = explained_variance(rollout.values, rollout.returns, mask, reduce_fn=ctx.distributed_reduce)
        ctx.log("value/explained_variance", ev)
        self._log_distribution(ctx, "value/old_values", rollout.values, mask)

    # --- update -----------------------------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)  # clipped surrogate + loss-stage tricks (entropy bonus)
        training = self.model.training and torch.is_grad_enabled()
        if "returns" in inputs:
            self._critic_update(inputs, step=training)
        if self._ptx_texts is not None and training:
            ptx = self._ptx_loss(model)
            self._metrics["train"]["ptx/loss"].append(float(self.accelerator.reduce(ptx.detach(), "mean")))
            # The parent scales its loss for gradient accumulation itself; scale the extra term the same way.
            loss = loss + self.args.ptx_coef * ptx / self.current_gradient_accumulation_steps
        if self.actor_frozen:
            loss = loss * 0.0  # critic warm-up: no gradient reaches the actor (its optimizer step is skipped too)
        return loss

    def _critic_update(self, inputs: dict, step: bool) -> None:
        """Clipped value loss on this micro-batch; backward now, optimizer step at the accumulation boundary."""
        mode = "train" if self.model.training else "eval"
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        deepspeed_critic = self._critic_is_deepspeed
        defer_sync = step and not deepspeed_critic and not self.accelerator.sync_gradients
        sync_context = self.accelerator.no_sync(self.critic) if defer_sync else nullcontext()
        with sync_context, torch.set_grad_enabled(step):
            with self.accelerator.autocast():
                values = critic_values(self.critic, input_ids, attention_mask, inputs["completion_ids"].size(1))
            # L_vf = ½·max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±ε_v); token mean over this
            # micro-batch (DDP averages the gradients over processes).
            value_loss, _ = clipped_value_loss(
                values, inputs["old_values"], inputs["returns"], mask, clip_range=self.args.value_clip
            )
            if step:
                if deepspeed_critic:
                    self.critic.backward(value_loss)  # the engine divides by GA itself
                else:
                    (value_loss / self.current_gradient_accumulation_steps).backward()
        self._log_value_stats(mode, values.detach(), inputs, mask)
        if step:
            self._critic_optimizer_step(mode)

    def _log_value_stats(self, mode: str, values: torch.Tensor, inputs: dict, mask: torch.Tensor) -> None:
        with torch.no_grad():
            active = mask.bool()
            returns, old_values = inputs["returns"], inputs["old_values"]
            squared = (values - returns).square()
            if self.args.value_clip is not None:
                clipped_values = old_values + (values - old_values).clamp(-self.args.value_clip, self.args.value_clip)
                clipped_squared = (clipped_values - returns).square()
                is_clipped = active & (clipped_squared > squared)
                squared = torch.maximum(squared, clipped_squared)
            else:
                is_clipped = torch.zeros_like(active)
            stats = self.accelerator.reduce(
                torch.stack([0.5 * squared[active].sum(), is_clipped.sum().float(), active.sum().float()]),
                reduction="sum",
            )
        count = stats[2].clamp(min=1.0)
        log = self.deferred_metrics.sink(self._metrics[mode], defer=mode == "train")  # read once per step
        log("value/loss", stats[0] / count)
        log("value/clip_fraction", stats[1] / count)

    def _critic_optimizer_step(self, mode: str) -> None:
        args = self.args
        # The critic follows the policy's schedule: lr_c(t) = critic_learning_rate · lr(t) / learning_rate.
        policy_lr = self._get_learning_rate() if self.lr_scheduler is not None else args.learning_rate
        scale = policy_lr / args.learning_rate if args.learning_rate > 0 else 1.0
        for group in self.critic_optimizer.param_groups:
            group["lr"] = args.critic_learning_rate * scale
        if self._critic_is_deepspeed:
            self.critic.step()  # updates only at the accumulation boundary; clips with gradient_clipping
            return
        if not self.accelerator.sync_gradients:
            return
        max_norm = args.max_grad_norm if args.critic_max_grad_norm is None else args.critic_max_grad_norm
        params = [param for param in self.critic.parameters() if param.requires_grad]
        # Global gradient clipping (PPO-max) for the critic; the norm is logged either way.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm and max_norm > 0 else float("inf"))
        if torch.isfinite(grad_norm):
            self.critic_optimizer.step()
        else:
            # A NaN/inf gradient (already reduced, so every process agrees) would poison the critic: skip the step.
            self._metrics[mode]["value/skipped_steps"].append(1.0)
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.deferred_metrics.sink(self._metrics[mode], defer=mode == "train")("value/grad_norm", grad_norm)
        self._metrics[mode]["value/learning_rate"].append(args.critic_learning_rate * scale)

    # --- checkpoints ------------------------------------------------------------------------------------------------

    def critic_state_dict(self) -> dict[str, torch.Tensor]:
        """The critic's full state dict. Under ZeRO-3 a collective (call it on every process), complete on rank 0."""
        if self._critic_is_deepspeed:
            if self.critic.zero_optimization_partition_weights():
                return self.critic._zero3_consolidated_16bit_state_dict()
            return self.critic.module.state_dict()
        return self.accelerator.unwrap_model(self.critic).state_dict()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (as TRL does) and the critic next to it, in ``<output_dir>/critic`` (put in place whole)."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        state_dict = self.critic_state_dict() if self._critic_is_deepspeed else None
        if self.args.should_save:
            critic = self.accelerator.unwrap_model(self.critic)
            with checkpoints.atomic_directory(os.path.join(output_dir, CRITIC_DIR), label=CRITIC_DIR) as folder:
                critic.save_pretrained(folder, state_dict=state_dict)

    def _save_checkpoint_files(self, folder: str) -> None:
        # Inside the mixin's save: before the completion marker and before older checkpoints are rotated away.
        super()._save_checkpoint_files(folder)  # trick state (moments, KL controller)
        critic_dir = os.path.join(folder, CRITIC_DIR)
        if self._critic_is_deepspeed:
            self.critic.save_checkpoint(critic_dir, tag=CRITIC_DEEPSPEED_TAG)  # every process writes its shard
        elif self.args.should_save:
            path = os.path.join(critic_dir, CRITIC_OPTIMIZER_FILE)
            with checkpoints.atomic_write(path, label=f"{CRITIC_DIR}/{CRITIC_OPTIMIZER_FILE}") as f:
                torch.save(self.critic_optimizer.state_dict(), f)

    def _checkpoint_problems(self, checkpoint: str) -> list[str]:
        critic_dir = os.path.join(checkpoint, CRITIC_DIR)
        if not os.path.isdir(critic_dir):
            return [f"it has no {CRITIC_DIR}/ folder, so it was not written by PPOMaxTrainer"]
        weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
        problems = []
        if not any(os.path.exists(os.path.join(critic_dir, name)) for name in weights):
            problems.append(f"{CRITIC_DIR}/ holds no critic weights ({' or '.join(weights)})")
        if self._critic_is_deepspeed:
            if not os.path.isdir(os.path.join(critic_dir, CRITIC_DEEPSPEED_TAG)):
                problems.append(
                    f"{CRITIC_DIR}/{CRITIC_DEEPSPEED_TAG}/ (the critic's DeepSpeed state) is missing; it was saved "
                    "without DeepSpeed"
                )
        elif not os.path.exists(os.path.join(critic_dir, CRITIC_OPTIMIZER_FILE)):
            problems.append(f"{CRITIC_DIR}/{CRITIC_OPTIMIZER_FILE} (the critic's optimizer) is missing")
        return problems

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        problems = self._checkpoint_problems(checkpoint)
        if problems:
            raise checkpoints.CheckpointError(f"Cannot resume from {checkpoint}: {'; '.join(problems)}")
        critic_dir = os.path.join(checkpoint, CRITIC_DIR)
        if self._critic_is_deepspeed:
            self.critic.load_checkpoint(
                critic_dir, tag=CRITIC_DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
            return
        critic = self.accelerator.unwrap_model(self.critic)
        try:
            _load_critic_weights(critic, critic_dir)
            state = torch.load(
                os.path.join(critic_dir, CRITIC_OPTIMIZER_FILE),
                map_location=self.accelerator.device,
                weights_only=True,
            )
            self.critic_optimizer.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
            raise checkpoints.CheckpointError(
                f"Cannot resume from {checkpoint}: the critic in {critic_dir} cannot be loaded ({type(err).__name__}: "
                f"{err}). Resume from an older complete checkpoint, or start afresh in a new output_dir."
            ) from err


def _load_critic_weights(critic: torch.nn.Module, directory: str) -> None:
    """Load what ``save_pretrained`` wrote (full weights, possibly sharded, or a PEFT adapter) back into ``critic``."""
    from safetensors.torch import load_file

    adapter = os.path.join(directory, "adapter_model.safetensors")
    if os.path.exists(adapter):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(critic, load_file(adapter))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"critic adapter checkpoint has unexpected keys: {unexpected[:5]}")
        return
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state_dict = {}
    for name in files:
        state_dict.update(load_file(os.path.join(directory, name)))
    critic.load_state_dict(state_dict, strict=True)
