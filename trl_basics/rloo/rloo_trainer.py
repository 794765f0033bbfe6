"""RLOO (Ahmadian et al. 2024, "Back to Basics") and REINFORCE with a moving-average baseline, on TRL's RLOOTrainer.

``RLOOTrainer`` changes nothing in TRL's RLOO until a trick flag is set. Then the advantages of every generation
round come from the trick pipeline (reward transforms → KL → leave-one-out → advantage transforms), computed from the
gathered rewards and the log-probs TRL already computed. With per-token KL in the reward the advantages become
token-level and the loss switches to a token-level clipped objective; otherwise TRL's sequence-level loss is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
import trl

from ..config import trick_field_names
from ..functional import clipped_policy_loss, sequence_clipped_policy_loss
from ..metrics import AUX_LOSS, CLIP_RATIO, ENTROPY
from ..pipeline import TrickPipeline
from ..seams import FORWARD_KEYS, rloo_generation_passes, single_generation_allowed
from ..trainer_mixin import TrickTrainerMixin
from .rloo_config import RLOOConfig


class RLOOTrainer(TrickTrainerMixin, trl.RLOOTrainer):
    """``trl.RLOOTrainer`` with the trl_basics trick pipeline.

    Accepts a ``trl_basics.RLOOConfig`` or a plain ``trl.RLOOConfig``; the constructor also takes
    ``plugin_manager`` (default: a fresh one from ``trl_basics.get_plugin_manager()``).
    """

    _tag_names = ["trl", "rloo", "trl_basics"]
    _name = "RLOO (trl_basics)"
    _paper = {
        "title": "Back to Basics: Revisiting REINFORCE-Style Optimization for Learning from Human Feedback in LLMs",
        "id": "2402.14740",
    }
    trl_parent = trl.RLOOTrainer
    trl_parent_config = trl.RLOOConfig
    config_class = RLOOConfig
    default_advantage_estimator = "rloo"
    always_active = False  # True for trainers whose estimator differs from TRL's
    state_settings = ("normalize_advantages", "reward_clip_range")

    def __init__(self, *args: Any, plugin_manager: Any = None, **kwargs: Any) -> None:
        self._init_parent(args, kwargs, plugin_manager)
        self._setup_tricks()

    # --- pipeline configuration -----------------------------------------------------------------------------------

    def build_pipeline(self, args: Any = None) -> TrickPipeline:
        """Empty unless a trick flag or an estimator is set (then TRL's own advantages stand, bit for bit)."""
        args = self.args if args is None else args
        if not (self.always_active or TrickPipeline.switched_on(args, self.trick_registry)):
            return TrickPipeline()
        pipeline = super().build_pipeline(args)
        if args.num_generations < 2 and pipeline.estimator.name == "rloo":
            raise ValueError("RLOO needs num_generations >= 2 for the leave-one-out baseline")
        return pipeline

    def pipeline_args(self, args: Any) -> Any:
        """The user's flags, with TRL's RLOO knobs that do the same job carried over into the pipeline."""
        flags = SimpleNamespace(**{name: getattr(args, name) for name in trick_field_names()})
        if flags.kl_coef is None and args.beta != 0.0:
            # TRL's beta: k1 summed over the sequence, subtracted from the reward (Back to Basics Eq. 3).
            flags.kl_coef, flags.kl_estimator, flags.kl_placement = args.beta, "k1", "sequence_reward"
        if args.normalize_advantages:
            flags.whiten_advantages = True
        return flags

    # --- generation round -----------------------------------------------------------------------------------------

    def rollout_rewards(self) -> torch.Tensor:
        rewards = self.scalar_rewards()
        if self.reward_clip_range:
            rewards = rewards.clamp(min=self.reward_clip_range[0], max=self.reward_clip_range[1])
        return rewards

    def rollout_logprobs(self, out: dict, passes: list):
        # TRL's RLOO computes π_old first, then π_ref when its beta != 0 (which the seam ensures when a trick needs
        # reference log-probs).
        return rloo_generation_passes(passes, self.beta != 0.0 or self.requirements.reference_logprobs)

    def store_rollout_extras(self, out: dict, rollout) -> None:
        needs = self.requirements
        if rollout.advantages.dim() == 2 or needs.loss_sampling_logprobs:
            out["old_per_token_logps"] = rollout.logprobs  # the token loss's ratio; ρ of use_bias_correction_kl
        if needs.loss_reference_logprobs:
            out["ref_per_token_logps"] = rollout.ref_logprobs

    # --- update -----------------------------------------------------------------------------------------------------

    def policy_loss(self, model, inputs):
        if inputs["advantages"].dim() == 2:
            return self._token_level_loss(model, inputs)
        if self.args.delta is not None:
            return self._sequence_level_dual_clip_loss(model, inputs)
        return self.parent_policy_loss(model, inputs)  # TRL's sequence-level clipped loss

    def _sequence_level_dual_clip_loss(self, model, inputs):
        """TRL's sequence-level objective (one ratio per completion, mean over completions) with dual clip c = delta."""
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        per_token_logps, entropies, aux_loss = self.per_token_logps(
            model,
            torch.cat([inputs["prompt_ids"], completion_ids], dim=1),
            torch.cat([inputs["prompt_mask"], completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in FORWARD_KEYS},
        )
        # One column per completion: Σ_t log π_θ against TRL's summed old log-prob, so the ratio is exactly TRL's.
        logps = (per_token_logps * completion_mask).sum(dim=1, keepdim=True)
        per_sequence_loss, clipped = sequence_clipped_policy_loss(
            logps,
            inputs["old_logps"].unsqueeze(1),
            inputs["advantages"],
            torch.ones_like(logps),
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            log_ratio_clamp=None,
            dual_clip=self.args.delta,
        )
        loss = per_sequence_loss.mean()
        log = self.metric_log()
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss
            log(AUX_LOSS, self.accelerator.gather_for_metrics(aux_loss).mean())
        mask = completion_mask.to(per_token_logps.dtype)
        stats = self.accelerator.reduce(
            torch.stack([(entropies * mask).sum(), mask.sum(), clipped.float().sum(), mask.new_tensor(len(mask))]),
            reduction="sum",
        )
        log(ENTROPY, stats[0] / stats[1].clamp(min=1.0))
        log(CLIP_RATIO, stats[2] / stats[3].clamp(min=1.0))
        return loss

    def _token_level_loss(self, model, inputs):
        """Clipped surrogate per token with token-level advantages (per-token KL in the reward).

        Summed over a completion's tokens and averaged over completions, so that with β = 0 (all tokens sharing one
        advantage) and ratio 1 the gradient equals the sequence-level RLOO gradient A·Σ_t ∇log π(a_t).
        """
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        per_token_logps, entropies, aux_loss = self.per_token_logps(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{key: inputs.get(key) for key in FORWARD_KEYS},
        )
        mask = completion_mask.to(per_token_logps.dtype)
        per_token_loss, clipped = clipped_policy_loss(
            per_token_logps,
            inputs["old_per_token_logps"],
            inputs["advantages"],
            mask,
            epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high,
            dual_clip=getattr(self.args, "delta", None),
        )
        loss = (per_token_loss * mask).sum(dim=1).mean()
        log = self.metric_log()  # tensors: read once per step
        if self.aux_loss_enabled:
            # Unscaled like TRL's RLOO loss (the Trainer divides by gradient accumulation); logged as TRL logs it.
            loss = loss + self.router_aux_loss_coef * aux_loss
            log(AUX_LOSS, self.accelerator.gather_for_metrics(aux_loss).mean())
        stats = self.accelerator.reduce(
            torch.stack([(clipped.float() * mask).sum(), (entropies * mask).sum(), mask.sum()]), reduction="sum"
        )
        count = stats[2].clamp(min=1.0)
        log(CLIP_RATIO, stats[0] / count)
        log(ENTROPY, stats[1] / count)
        return loss


@dataclass
class ReinforceWithBaselineConfig(RLOOConfig):
    r"""
    Config of REINFORCE with a moving-average baseline (Back to Basics, "REINFORCE w/ baseline", Eqs. 7-8).

    Same fields as ``trl_basics.RLOOConfig``; the advantage estimator defaults to `"moving_average"`: A = R - b_MA,
    with b_MA the mean of all earlier training rewards (or an EMA with `baseline_decay`).
    """

    advantage_estimator: str | None = field(
        default="moving_average",
        metadata={"help": "Advantage estimator; 'moving_average' is REINFORCE with a moving-average baseline."},
    )

    def __post_init__(self) -> None:
        # One sample per prompt is enough for a moving-average baseline; TRL's RLOOConfig insists on 2.
        with single_generation_allowed(self):
            super().__post_init__()


class ReinforceWithBaselineTrainer(RLOOTrainer):
    """REINFORCE with a moving-average baseline: ``RLOOTrainer`` with the ``moving_average`` estimator.

    The baseline is built from earlier batches only and is saved with every checkpoint.
    """

    _tag_names = ["trl", "reinforce", "trl_basics"]
    _name = "REINFORCE with moving-average baseline (trl_basics)"
    config_class = ReinforceWithBaselineConfig
    default_advantage_estimator = "moving_average"
    always_active = True
