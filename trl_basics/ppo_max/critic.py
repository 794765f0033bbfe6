"""The PPO-max critic as one object: its model, its own AdamW, and its DeepSpeed engine when DeepSpeed is on.

[`Critic`] is what PPO-max adds to the policy's training: V_old for the rollout ([`Critic.values`]), the clipped
value-loss update on every micro-batch with an optimizer step at accumulation boundaries ([`Critic.update`]), and
the critic's part of ``save_model`` and of each checkpoint. Every DeepSpeed branch of the critic is in here; the
trainer hands in what only it knows (whether gradients sync on this micro-batch, the accumulation divisor, the
policy's learning rate) and logs the returned [`CriticStats`].

Under DDP the critic is prepared with ``accelerator.prepare_model`` and its torch AdamW is stepped by hand; under
DeepSpeed it gets its own engine from the policy's DeepSpeed config (accelerate drives one engine, the policy's).
"""

from __future__ import annotations

import copy
import os
import pickle
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import Tensor, nn

from .. import checkpoints
from ..functional import clipped_value_loss
from ..seams import disable_gradient_checkpointing
from .critic_models import (
    check_critic_architecture,
    critic_values,
    given_value_model,
    load_critic_weights,
    load_value_model,
    value_model_from_causal_lm,
    with_trainable_value_head,
)

# The model helpers stay importable from here.
__all__ = ["Critic", "CriticStats", "check_critic_architecture", "critic_values", "load_value_model",
           "value_model_from_causal_lm", "with_trainable_value_head"]  # fmt: skip

CRITIC_DIR = "critic"
CRITIC_OPTIMIZER_FILE = "optimizer.pt"
CRITIC_DEEPSPEED_TAG = "deepspeed"
CRITIC_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class CriticStats:
    """What one [`Critic.update`] measured. Tensors stay where they were computed (no host read here).

    Args:
        loss: ½·mean of max((V - R)², (V_clip - R)²) over the active tokens of every process.
        clip_fraction: The fraction of those tokens where the clipped term is the larger one.
        grad_norm: The critic's gradient norm before clipping, at an optimizer step (None otherwise, and under
            DeepSpeed, whose engine clips by itself).
        skipped_steps: 1.0 when the step was skipped because that norm was not finite, else None.
        learning_rate: The learning rate the step used (None where ``grad_norm`` is None).
    """

    loss: Tensor
    clip_fraction: Tensor
    grad_norm: Tensor | None = None
    skipped_steps: float | None = None
    learning_rate: float | None = None

    def metrics(self) -> dict[str, Tensor | float]:
        """The ``value/*`` metrics to log, by name; fields that are None are left out."""
        named = {
            "value/loss": self.loss,
            "value/clip_fraction": self.clip_fraction,
            "value/skipped_steps": self.skipped_steps,
            "value/grad_norm": self.grad_norm,
            "value/learning_rate": self.learning_rate,
        }
        return {name: value for name, value in named.items() if value is not None}


class Critic:
    """A value model with its own optimizer, prepared for the accelerator's distribution.

    Args:
        model: A ``*ForTokenClassification`` model with one output (or a PEFT model around one), in train mode.
        optimizer: Its torch optimizer. Under DeepSpeed both go into a new DeepSpeed engine.
        accelerator: The trainer's ``accelerate.Accelerator``.
        args: The trainer's ``PPOMaxConfig``: the critic's settings, ``learning_rate`` (the policy's, which the
            critic's schedule follows), batch and precision settings.

    Attributes:
        model: The unwrapped model (what ``accelerator.unwrap_model`` returns; its parameters are the critic's).
        wrapped: What forwards and backwards run through: the DeepSpeed engine, the DDP wrapper, or the model.
        optimizer: The optimizer that steps the critic (DeepSpeed's own wrapper under DeepSpeed).
        deepspeed: Whether the critic has its own DeepSpeed engine.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Any, args: Any) -> None:
        self.accelerator = accelerator
        self.args = args
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed:
            self.wrapped, self.optimizer = self._deepspeed_engine(
                model, optimizer, accelerator, args, self.max_grad_norm
            )
        else:
            # DDP (or plain device placement); the optimizer stays a torch optimizer stepped at GA boundaries.
            self.wrapped = accelerator.prepare_model(model)
            self.optimizer = optimizer
        self.model = accelerator.unwrap_model(self.wrapped)

    @classmethod
    def build(
        cls,
        source: str | nn.Module,
        accelerator: Any,
        args: Any,
        *,
        dtype: torch.dtype | None = None,
        peft_config: Any = None,
        policy: nn.Module | None = None,
    ) -> Critic:
        """The critic from ``source``: a model id or path (reward model or causal LM) loaded as a one-output token
        classifier, or a ready ``*ForTokenClassification`` model with one output.

        Args:
            dtype: The dtype a loaded critic takes (the policy's).
            peft_config: A ``peft.PeftConfig`` for an adapter on the critic; the value head ``score`` trains in full.
            policy: The in-memory causal LM that ``source`` names, if any: when the path cannot be loaded (a policy
                that was never saved), its backbone is copied under a fresh value head instead.
        """
        if isinstance(source, str):
            init_kwargs = dict(args.model_init_kwargs or {})
            for key in ("dtype", "torch_dtype", "device_map", "quantization_config"):
                init_kwargs.pop(key, None)
            try:
                model = load_value_model(source, dtype=dtype, trust_remote_code=args.trust_remote_code, **init_kwargs)
            except (OSError, ValueError):
                if policy is None:
                    raise
                model = value_model_from_causal_lm(policy)
        else:
            model = given_value_model(source)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        if peft_config is not None:
            from peft import get_peft_model

            if args.gradient_checkpointing:
                model.enable_input_require_grads()
            model = get_peft_model(model, with_trainable_value_head(peft_config))
        model.train()
        optimizer = torch.optim.AdamW(
            [param for param in model.parameters() if param.requires_grad],
            lr=args.critic_learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        return cls(model, optimizer, accelerator, args)

    @property
    def max_grad_norm(self) -> float | None:
        """The gradient-norm clip: ``critic_max_grad_norm``, or the policy's ``max_grad_norm`` when that is None."""
        args = self.args
        return args.max_grad_norm if args.critic_max_grad_norm is None else args.critic_max_grad_norm

    def learning_rate(self, policy_lr: float) -> float:
        """The critic follows the policy's schedule: lr_c(t) = critic_learning_rate · lr(t) / learning_rate."""
        args = self.args
        scale = policy_lr / args.learning_rate if args.learning_rate > 0 else 1.0
        return args.critic_learning_rate * scale

    # --- values and update ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def values(self, batch: dict) -> Tensor:
        """V_old(s_t) of the sampled completions in ``batch`` (prompt/completion ids and masks), (B, T), 0 at
        inactive positions. No gradient; run in chunks of ``per_device_train_batch_size`` rows."""
        module = self.wrapped if self.deepspeed else self.model
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with (
            self.accelerator.autocast(),
            disable_gradient_checkpointing(module, self.args.gradient_checkpointing_kwargs),
        ):
            values = critic_values(
                module,
                input_ids,
                attention_mask,
                batch["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
        return values * batch["completion_mask"]

    def update(
        self,
        inputs: dict,
        mask: Tensor,
        *,
        step: bool,
        policy_lr: float | None = None,
        sync_gradients: bool = True,
        accumulation_steps: int = 1,
        window_tokens: Tensor | float | None = None,
    ) -> CriticStats:
        """The clipped value loss on this micro-batch; with ``step``, its backward now and an optimizer step at the
        accumulation boundary.

        L_vf = ½·max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, ±value_clip). With ``window_tokens``
        the gradient is of the sum over this micro-batch's active tokens (``mask``) divided by the window's token
        count, so that accumulating micro-batches on any number of processes equals one update on the whole window
        (DDP averages over processes: each divides by ``window_tokens / num_processes``). Without it, each micro-batch
        counts as its own token mean divided by the accumulation divisor. Without ``step`` (evaluation) only the
        statistics are computed, without gradients.

        Args:
            inputs: The micro-batch: prompt/completion ids and masks, ``old_values`` and ``returns`` (B, T).
            mask: (B, T) tokens that count (the completion mask, times the tool mask if any).
            step: Train on this micro-batch.
            policy_lr: The policy's current learning rate, which the critic's follows (needed with ``step``).
            sync_gradients: Whether this micro-batch ends an accumulation window (the optimizer steps after it).
            accumulation_steps: The divisor of the loss for gradient accumulation (DeepSpeed divides by itself).
            window_tokens: The active tokens of the whole accumulation window over every process.
        """
        if step and policy_lr is None:
            raise ValueError("Critic.update(step=True) needs policy_lr, the policy's current learning rate")
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        defer_sync = step and not self.deepspeed and not sync_gradients
        sync_context = self.accelerator.no_sync(self.wrapped) if defer_sync else nullcontext()
        with sync_context, torch.set_grad_enabled(step):
            with self.accelerator.autocast():
                values = critic_values(self.wrapped, input_ids, attention_mask, inputs["completion_ids"].size(1))
            loss, clip_fraction = clipped_value_loss(
                values, inputs["old_values"], inputs["returns"], mask, clip_range=self.args.value_clip
            )
            if step:
                objective = loss / accumulation_steps
                if window_tokens is not None:
                    share = window_tokens / self.accelerator.num_processes
                    objective = loss * mask.bool().sum() / share
                if self.deepspeed:
                    # the engine divides by its gradient accumulation itself
                    self.wrapped.backward(objective * accumulation_steps)
                else:
                    objective.backward()
        stats = self._global_stats(loss.detach(), clip_fraction, mask)
        return self._optimizer_step(stats, policy_lr, sync_gradients) if step else stats

    def _global_stats(self, loss: Tensor, clip_fraction: Tensor, mask: Tensor) -> CriticStats:
        """Loss and clip fraction over the active tokens of every process, from this process's token means."""
        with torch.no_grad():
            count = mask.bool().sum().float()
            # The loss is (Σ loss_t)/n and the fraction (clipped count)/n over this process's n active tokens: times n
            # they are this process's sums again (the clipped count rounded back to the integer it is).
            local = torch.stack([loss * count, (clip_fraction * count).round(), count])
            totals = self.accelerator.reduce(local, reduction="sum")
        count = totals[2].clamp(min=1.0)
        return CriticStats(loss=totals[0] / count, clip_fraction=totals[1] / count)

    def _optimizer_step(self, stats: CriticStats, policy_lr: float, sync_gradients: bool) -> CriticStats:
        learning_rate = self.learning_rate(policy_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        if self.deepspeed:
            self.wrapped.step()  # updates only at the accumulation boundary; clips with gradient_clipping
            return stats
        if not sync_gradients:
            return stats
        max_norm = self.max_grad_norm
        params = [param for param in self.wrapped.parameters() if param.requires_grad]
        # Global gradient clipping (PPO-max) for the critic; the norm is logged either way.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm and max_norm > 0 else float("inf"))
        skipped = None
        if torch.isfinite(grad_norm):
            self.optimizer.step()
        else:
            # A NaN/inf gradient (already reduced, so every process agrees) would poison the critic: skip the step.
            skipped = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        return replace(stats, grad_norm=grad_norm, skipped_steps=skipped, learning_rate=learning_rate)

    @staticmethod
    def _deepspeed_engine(
        model: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Any, args: Any, max_norm: float | None
    ):
        """The critic's own DeepSpeed engine (accelerate drives one engine, the policy's), from the policy's DS config.

        The engine counts micro-batches itself: ``backward`` scales by 1/GA and ``step`` updates only at boundaries.
        Returns the engine and its optimizer.
        """
        import deepspeed

        config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
        config.pop("optimizer", None)
        config.pop("scheduler", None)
        config["train_micro_batch_size_per_gpu"] = args.per_device_train_batch_size
        config["gradient_accumulation_steps"] = args.gradient_accumulation_steps
        config["train_batch_size"] = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * accelerator.num_processes
        )
        config["gradient_clipping"] = max_norm
        config["zero_allow_untested_optimizer"] = True  # our torch AdamW
        config.setdefault("bf16", {})["enabled"] = bool(args.bf16)
        config.setdefault("fp16", {})["enabled"] = bool(args.fp16)
        zero = config.setdefault("zero_optimization", {})
        hidden_size = getattr(model.config, "hidden_size", None)
        for key, value in {
            "reduce_bucket_size": hidden_size * hidden_size if hidden_size else 5e8,
            "stage3_param_persistence_threshold": 10 * hidden_size if hidden_size else 1e5,
            "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size) if hidden_size else 5e8,
        }.items():
            if zero.get(key) == "auto":
                zero[key] = value
        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        return engine, ds_optimizer

    # --- weights and checkpoints ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """The critic's full state dict. Under ZeRO-3 a collective (call it on every process), complete on rank 0."""
        if self.deepspeed:
            if self.wrapped.zero_optimization_partition_weights():
                return self.wrapped._zero3_consolidated_16bit_state_dict()
            return self.wrapped.module.state_dict()
        return self.model.state_dict()

    def save_pretrained(self, output_dir: str, should_save: bool) -> None:
        """Write the critic to ``<output_dir>/critic`` (put in place whole) with ``save_pretrained``: full weights
        that ``AutoModelForTokenClassification.from_pretrained`` reloads, or a PEFT critic's adapter.

        Call it on every process (under DeepSpeed gathering the weights is a collective); ``should_save`` says
        whether this process writes.
        """
        state_dict = self.state_dict() if self.deepspeed else None
        if should_save:
            with checkpoints.atomic_directory(os.path.join(output_dir, CRITIC_DIR), label=CRITIC_DIR) as folder:
                self.model.save_pretrained(folder, state_dict=state_dict)

    def save_checkpoint(self, checkpoint: str, should_save: bool) -> None:
        """Write the critic's optimizer state into ``<checkpoint>/critic`` (its weights come from ``save_pretrained``):
        ``optimizer.pt`` written atomically, or under DeepSpeed the engine's checkpoint, a shard from every process."""
        critic_dir = os.path.join(checkpoint, CRITIC_DIR)
        if self.deepspeed:
            self.wrapped.save_checkpoint(critic_dir, tag=CRITIC_DEEPSPEED_TAG)  # every process writes its shard
        elif should_save:
            path = os.path.join(critic_dir, CRITIC_OPTIMIZER_FILE)
            with checkpoints.atomic_write(path, label=f"{CRITIC_DIR}/{CRITIC_OPTIMIZER_FILE}") as f:
                torch.save(self.optimizer.state_dict(), f)

    def checkpoint_problems(self, checkpoint: str) -> list[str]:
        """What ``checkpoint`` lacks for this critic to resume from it (empty when nothing)."""
        critic_dir = os.path.join(checkpoint, CRITIC_DIR)
        if not os.path.isdir(critic_dir):
            return [f"it has no {CRITIC_DIR}/ folder, so it was not written by PPOMaxTrainer"]
        problems = []
        if not any(os.path.exists(os.path.join(critic_dir, name)) for name in CRITIC_WEIGHT_FILES):
            problems.append(f"{CRITIC_DIR}/ holds no critic weights ({' or '.join(CRITIC_WEIGHT_FILES)})")
        if self.deepspeed:
            if not os.path.isdir(os.path.join(critic_dir, CRITIC_DEEPSPEED_TAG)):
                problems.append(
                    f"{CRITIC_DIR}/{CRITIC_DEEPSPEED_TAG}/ (the critic's DeepSpeed state) is missing; it was saved "
                    "without DeepSpeed"
                )
        elif not os.path.exists(os.path.join(critic_dir, CRITIC_OPTIMIZER_FILE)):
            problems.append(f"{CRITIC_DIR}/{CRITIC_OPTIMIZER_FILE} (the critic's optimizer) is missing")
        return problems

    def load_checkpoint(self, checkpoint: str) -> None:
        """Restore the critic's weights and optimizer from ``checkpoint``; a ``checkpoints.CheckpointError`` says what
        is missing or cannot be loaded."""
        problems = self.checkpoint_problems(checkpoint)
        if problems:
            raise checkpoints.CheckpointError(f"Cannot resume from {checkpoint}: {'; '.join(problems)}")
        critic_dir = os.path.join(checkpoint, CRITIC_DIR)
        if self.deepspeed:
            self.wrapped.load_checkpoint(
                critic_dir, tag=CRITIC_DEEPSPEED_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
            return
        try:
            load_critic_weights(self.model, critic_dir)
            state = torch.load(
                os.path.join(critic_dir, CRITIC_OPTIMIZER_FILE),
                map_location=self.accelerator.device,
                weights_only=True,
            )
            self.optimizer.load_state_dict(state)
        except (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as err:
            raise checkpoints.CheckpointError(
                f"Cannot resume from {checkpoint}: the critic in {critic_dir} cannot be loaded ({type(err).__name__}: "
                f"{err}). Resume from an older complete checkpoint, or start afresh in a new output_dir."
            ) from err
