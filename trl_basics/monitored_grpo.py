"""TRL's GRPO unchanged, with the monitors trl_basics trainers log, so it can be plotted beside them."""

from __future__ import annotations

from typing import Any

import torch
import trl

from .callbacks import install_monitors
from .metrics import KL_TO_REFERENCE
from .pipeline import TrickPipeline
from .trainer_mixin import TrickTrainerMixin


class MonitoredGRPOTrainer(TrickTrainerMixin, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with an empty trick pipeline: identical training, plus monitors.

    The monitors: ``perplexity``, the collapse alarm's ``collapse/*`` and ``kl_to_ref/k1_token_mean`` (the k1 KL to
    the reference per token, the estimator the trl_basics trainers log, beside TRL's own ``kl``, which is k3).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trick_pipeline = TrickPipeline()
        install_monitors(self)  # GRPOConfig has no `collapse_alarm`: the alarm runs at its default, "warn"

    def after_policy_loss(self, model: Any, inputs: dict, loss: torch.Tensor, policy_pass: tuple) -> torch.Tensor:
        loss = super().after_policy_loss(model, inputs, loss, policy_pass)
        ref = inputs.get("ref_per_token_logps")
        if ref is not None:
            # The policy's log-probs of the sampled tokens, as TRL just computed them (on-policy: the sampler's).
            logps = policy_pass[0].detach()
            mask = inputs["completion_mask"]
            ctx = self.trick_context()
            with torch.no_grad():
                stats = ctx.reduce_sum(torch.stack([((logps - ref) * mask).sum(), mask.sum().float()]))
            ctx.log(KL_TO_REFERENCE, stats[0] / stats[1].clamp(min=1.0))
        return loss
