"""PPO-max (Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO") on TRL's GRPOTrainer.

TRL 1.16 has no PPO trainer. This one keeps GRPO's generation (transformers, vLLM, tools), reference model, reward
functions, accelerate set-up and token-level clipped loss, and adds what PPO needs around them:

- a separate critic (``critic.Critic``: an ``AutoModelForTokenClassification`` with one output and its own AdamW,
  prepared by accelerate (DDP) or in its own DeepSpeed engine), updated on every micro-batch with the clipped value
  loss and stepped at gradient-accumulation boundaries;
- old values V(s_t) from the critic in each generation round, put into the rollout so that the trick pipeline's
  ``gae`` estimator turns the (normalized, clipped, KL-shaped) rewards into GAE advantages and returns;
- optional critic warm-up (actor frozen), a pretraining-loss mix (ptx), checkpointing of the critic and its
  optimizer, value monitors and the collapse alarm.

Reward normalization and clipping, the token-level KL penalty and the entropy bonus are the shared trick plugins.
GRPO's own KL term (``beta``, k3 in the loss) stays off: the KL is in the reward.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import torch
from accelerate.utils import is_peft_model
from transformers import PreTrainedModel, TrainerCallback

from ..functional import explained_variance
from ..grpo_base import GRPOTrickTrainer
from ..metrics import log_distribution
from ..seams import get_config_model_id
from ..trainer_mixin import action_mask
from ..types import Rollout, TrickContext
from .critic import Critic
from .ppo_max_config import PPOMaxConfig
from .ptx import PtxDraws, ptx_loss, ptx_texts

logger = logging.getLogger(__name__)


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
    state_settings = (
        "critic_model_path",
        "critic_init",
        "critic_learning_rate",
        "critic_max_grad_norm",
        "critic_warmup_steps",
        "value_clip",
    )

    def __init__(
        self,
        *args: Any,
        critic_model: str | PreTrainedModel | None = None,
        critic_peft_config: Any = None,
        ptx_dataset: Any = None,
        plugin_manager: Any = None,
        **kwargs: Any,
    ) -> None:
        self._init_parent(args, kwargs, plugin_manager)  # beta stays 0: GRPO's own KL term in the loss stays off
        # The critic first: it looks for a reward model among the reward functions as the parent set them up.
        self._setup_critic(critic_model, critic_peft_config)
        self._setup_tricks()
        texts = ptx_texts(ptx_dataset, self.args)
        self._ptx = PtxDraws(texts, self.args.seed) if texts is not None else None
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
        if self.is_fsdp_enabled:
            raise NotImplementedError(
                "PPOMaxTrainer prepares its critic with DDP or its own DeepSpeed engine; FSDP is not supported. Use "
                "DeepSpeed ZeRO-3 (examples/accelerate/deepspeed_zero3.yaml) for sharded training."
            )
        source, self.critic_init_source = self._critic_source(critic_model)
        # A policy passed as an object that was never saved has no path to reload: its backbone is copied instead.
        copyable = self.critic_init_source == "policy" and not is_peft_model(self.model)
        self.critic = Critic.build(
            source,
            self.accelerator,
            self.args,
            dtype=self.model.dtype,
            peft_config=peft_config,
            policy=self.accelerator.unwrap_model(self.model) if copyable else None,
        )

    @property
    def actor_frozen(self) -> bool:
        """True during critic warm-up: the policy does not move while the critic pre-trains."""
        return self.model.training and self.state.global_step < self.args.critic_warmup_steps

    # --- ptx -------------------------------------------------------------------------------------------------------

    def _ptx_batch(self) -> list[str]:
        """This micro-batch's ptx texts: a function of (global step, micro-step, rank), so resuming draws the same."""
        size = self.args.ptx_batch_size or self.args.per_device_train_batch_size
        accumulation = self.args.gradient_accumulation_steps
        micro = self.accumulation_micro_step
        draw = (self.state.global_step * accumulation + micro) * self.accelerator.num_processes
        return self._ptx.batch((draw + self.accelerator.process_index) * size, size)

    def _ptx_loss(self, model) -> torch.Tensor:
        """Mean next-token NLL of the policy on plain texts (paper Eq. 17), without the sampling temperature."""
        texts = self._ptx_batch()
        # Through the unwrapped module: under DDP the policy's single backward then reduces both terms once.
        policy = model if self.is_deepspeed_enabled else self.accelerator.unwrap_model(model)
        return ptx_loss(policy, self.text_tokenizer, texts, self.args.ptx_max_length, self.accelerator)

    # --- generation round -------------------------------------------------------------------------------------------

    def build_rollout(self, out: dict, passes: list) -> Rollout:
        rollout = super().build_rollout(out, passes)
        return rollout.replace(values=self.critic.values(out))

    def store_rollout_extras(self, out: dict, rollout: Rollout) -> None:
        if rollout.returns is None:
            raise ValueError(
                f"advantage_estimator={self.trick_pipeline.estimator.name!r} sets no returns, so the critic has no "
                "target. PPO-max uses 'gae'; for a critic-free method use ReinforcePlusPlusTrainer or RLOOTrainer."
            )
        out["old_values"] = rollout.values.float()
        out["returns"] = rollout.returns.float()

    def log_rollout(self, rollout: Rollout, raw_rewards: torch.Tensor, ctx: TrickContext) -> None:
        super().log_rollout(rollout, raw_rewards, ctx)
        mask = rollout.completion_mask
        # How much of the return variance the critic explained *before* it trained on this batch (Schulman 2016).
        ev = explained_variance(rollout.values, rollout.returns, mask, reduce_fn=ctx.distributed_reduce)
        ctx.log("value/explained_variance", ev)
        log_distribution(ctx, "value/old_values", rollout.values, mask)

    # --- update -----------------------------------------------------------------------------------------------------

    def after_policy_loss(self, model: Any, inputs: dict, loss: torch.Tensor, policy_pass: tuple) -> torch.Tensor:
        """The critic's update, the ptx term and the warm-up freeze, after the clipped surrogate and the loss-stage
        tricks (entropy bonus) of this micro-batch."""
        loss = super().after_policy_loss(model, inputs, loss, policy_pass)
        training = self.model.training and torch.is_grad_enabled()
        if "returns" in inputs:
            self._critic_update(inputs, step=training)
        if self._ptx is not None and training:
            ptx = self._ptx_loss(model)
            self.metric_log()("ptx/loss", self.accelerator.reduce(ptx.detach(), "mean"))
            # The parent scales its loss for gradient accumulation itself; scale the extra term the same way.
            loss = loss + self.args.ptx_coef * ptx / self.current_gradient_accumulation_steps
        if self.actor_frozen:
            loss = loss * 0.0  # critic warm-up: no gradient reaches the actor (its optimizer step is skipped too)
        return loss

    def _critic_update(self, inputs: dict, step: bool) -> None:
        """The critic's update on this micro-batch (an optimizer step at the accumulation boundary), logged."""
        mask = action_mask(inputs)
        policy_lr, accumulation, window_tokens = None, 1, None
        if step:
            policy_lr = self.policy_learning_rate()
            accumulation = self.current_gradient_accumulation_steps
            window_tokens = self.window_token_count(inputs)
        stats = self.critic.update(
            inputs,
            mask,
            step=step,
            policy_lr=policy_lr,
            sync_gradients=self.accelerator.sync_gradients,
            accumulation_steps=accumulation,
            window_tokens=window_tokens,
        )
        log = self.metric_log()
        for name, value in stats.metrics().items():
            log(name, value)

    # --- checkpoints ------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the policy (as TRL does) and the critic next to it, in ``<output_dir>/critic`` (put in place whole)."""
        super().save_model(output_dir, _internal_call)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.critic.save_pretrained(output_dir, should_save=self.args.should_save)

    def write_checkpoint_files(self, folder: str) -> None:
        # Inside the seam's save: before the completion marker and before older checkpoints are rotated away.
        super().write_checkpoint_files(folder)  # trick state (moments, KL controller)
        self.critic.save_checkpoint(folder, should_save=self.args.should_save)

    def checkpoint_problems(self, checkpoint: str) -> list[str]:
        return self.critic.checkpoint_problems(checkpoint)

    def load_checkpoint_extras(self, checkpoint: str) -> None:
        super().load_checkpoint_extras(checkpoint)  # the trick state, if train() has not loaded it yet
        self.critic.load_checkpoint(checkpoint)
