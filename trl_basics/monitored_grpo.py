"""TRL's GRPO unchanged, with the monitors trl_basics trainers log, so it can be plotted beside them."""

from __future__ import annotations

import torch
import trl

from .callbacks import install_monitors
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
        self._kl_shaping = None
        install_monitors(self)  # GRPOConfig has no `collapse_alarm`: the alarm runs at its default, "warn"

    def _policy_loss(self, model, inputs):
        loss = super()._policy_loss(model, inputs)
        ref = inputs.get("ref_per_token_logps")
        if ref is not None and self._logps_record:
            # The policy's log-probs of the sampled tokens, as TRL just computed them (on-policy: the sampler's).
            logps = self._logps_record[0][0].detach()
            mask = inputs["completion_mask"]
            ctx = self._trick_context()
            with torch.no_grad():
                stats = ctx.reduce_sum(torch.stack([((logps - ref) * mask).sum(), mask.sum().float()]))
            ctx.log("kl_to_ref/k1_token_mean", float(stats[0] / stats[1].clamp(min=1.0)))
        return loss
