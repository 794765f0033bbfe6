"""What the trainers built on TRL's GRPOTrainer share (REINFORCE++, its RLOO and moving-average variants, PPO-max).

Both keep GRPO's token-level clipped loss and turn GRPO's own KL term (``beta``·k3 in the loss) off: their KL is the
trick pipeline's. Both need the sampling policy's per-token log-probs when a generation round is scored, which
GRPO computes only off-policy.
"""

from __future__ import annotations

from typing import Any

import torch
import trl

from .seams import nanstd
from .trainer_mixin import TrickTrainerMixin


class GRPOTrickTrainer(TrickTrainerMixin, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with the trick pipeline; subclasses set ``config_class`` and the estimator."""

    trl_parent = trl.GRPOTrainer
    trl_parent_config = trl.GRPOConfig

    # --- generation round -----------------------------------------------------------------------------------------

    def rollout_rewards(self) -> torch.Tensor:
        if getattr(self.args, "multi_objective_aggregation", "sum_then_normalize") != "normalize_then_sum":
            return self.scalar_rewards()
        # GRPO's multi-objective option: z-score every reward function within its group, then take the weighted
        # sum; the advantage estimator works on that sum as on any scalar reward.
        per_func = self._rewards_per_func
        grouped = per_func.view(-1, self.num_generations, per_func.size(1))
        standardized = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (
            nanstd(grouped, dim=1, keepdim=True) + 1e-4
        )
        weights = self.reward_weights.to(per_func.device)
        rewards = (standardized.view_as(per_func) * weights.unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(per_func).all(dim=1)] = torch.nan
        return rewards

    def rollout_logprobs(self, out: dict, passes: list):
        logprobs = out.get("old_per_token_logps")
        if logprobs is None and self.requirements.sampling_logprobs:
            # On-policy GRPO skips this pass (the loss reuses its own detached log-probs), but a trick needs π_old
            # now, before the update: one extra forward without gradient.
            logprobs = self.sampling_logprobs(out)
        return logprobs, out.get("ref_per_token_logps")

    def sampling_logprobs(self, out: dict) -> torch.Tensor:
        return self.completion_logprobs(out, batch_size=self.args.per_device_train_batch_size)

    # --- update -----------------------------------------------------------------------------------------------------

    def policy_loss(self, model: Any, inputs: dict):
        with self.parent_kl_off():  # KL here is owned by the trick pipeline
            return self.parent_policy_loss(model, inputs)
