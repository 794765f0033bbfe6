"""What the trainers built on TRL's GRPOTrainer share (REINFORCE++, its RLOO and moving-average variants, PPO-max).

Both keep GRPO's token-level clipped loss and turn GRPO's own KL term (``beta``·k3 in the loss) off: their KL is the
trick pipeline's. Both need the sampling policy's per-token log-probs when a generation round is scored, which
GRPO computes only off-policy.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
import trl
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import nanstd

from .trainer_mixin import FORWARD_KEYS, TrickTrainerMixin


class GRPOTrickTrainer(TrickTrainerMixin, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with the trick pipeline; subclasses set ``config_class`` and the estimator."""

    trl_parent = trl.GRPOTrainer
    trl_parent_config = trl.GRPOConfig

    # --- generation round -----------------------------------------------------------------------------------------

    def _rollout_rewards(self) -> torch.Tensor:
        if getattr(self.args, "multi_objective_aggregation", "sum_then_normalize") != "normalize_then_sum":
            return self._scalar_rewards()
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

    def _rollout_logprobs(self, out: dict, recorded: list):
        logprobs = out.get("old_per_token_logps")
        if logprobs is None and self._kl_shaping is not None:
            # On-policy GRPO skips this pass (the loss reuses its own detached log-probs), but KL in the reward is
            # needed now, before the update: one extra forward without gradient.
            logprobs = self._sampling_logprobs(out)
        return logprobs, out.get("ref_per_token_logps")

    @torch.no_grad()
    def _sampling_logprobs(self, out: dict) -> torch.Tensor:
        input_ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        attention_mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logprobs, _, _ = self._get_per_token_logps_and_entropies(
                self.model,
                input_ids,
                attention_mask,
                out["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
                **{key: out[key] for key in FORWARD_KEYS if key in out},
            )
        return logprobs

    # --- update -----------------------------------------------------------------------------------------------------

    def _policy_loss(self, model: Any, inputs: dict):
        with self._grpo_kl_off():
            return super()._policy_loss(model, inputs)

    @contextmanager
    def _grpo_kl_off(self):
        """GRPO adds beta·k3 to the loss when beta != 0; KL here is owned by the trick pipeline."""
        saved, self.beta = self.beta, 0.0
        try:
            yield
        finally:
            self.beta = saved
