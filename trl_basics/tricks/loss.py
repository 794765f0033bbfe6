"""Extra loss terms (stage 5): the entropy bonus. (KL in the loss lives with the other KL options in ``kl.py``.)"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ..functional import masked_mean, window_mean
from ..hookspecs import hookimpl
from ..types import LossInputs, Stage, Trick, TrickContext


class EntropyBonus(Trick):
    """-c·H̄, or c·|H̄ - δ| with a target entropy δ (PPO-max, Zheng et al. 2023, App. B.3)."""

    name = "entropy_bonus"
    stage = Stage.LOSS
    flag = "entropy_bonus_coef"
    off_flags = MappingProxyType({"entropy_bonus_coef": 0.0, "entropy_bonus_target": None})
    order = 10
    summary = "Reward policy entropy (or hold it near a target) through an extra loss term."
    source = "Mnih et al. 2016; Zheng et al. 2023, Secrets of RLHF Part I, App. B.3 (target form)"

    def __init__(self, args: Any = None, coef: float = 0.01, target: float | None = None) -> None:
        super().__init__(args)
        self.coef = coef
        self.target = target

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        if args.entropy_bonus_coef == 0:
            return None
        return cls(args, coef=args.entropy_bonus_coef, target=args.entropy_bonus_target)

    def loss(self, inputs: LossInputs, ctx: TrickContext) -> Tensor | None:
        if inputs.entropies is None:
            raise ValueError("entropy_bonus needs per-token entropies in the loss inputs; the trainer gave none")
        mask = inputs.completion_mask.to(inputs.entropies.dtype)
        if self.target is None:
            # Linear in the entropy: the window's token mean, whatever the split into micro-batches.
            mean_entropy = window_mean(inputs.entropies, mask, inputs.token_normalizer)
            ctx.log("mean_entropy", masked_mean(inputs.entropies.detach(), mask))
            return -self.coef * mean_entropy
        # |H̄ - δ| is not linear in the tokens: each micro-batch's own mean, weighted by its share of the window's
        # tokens (the weights add up to 1 over the window; 1 without a normaliser).
        mean_entropy = masked_mean(inputs.entropies, mask)
        ctx.log("mean_entropy", mean_entropy.detach())
        share = window_mean(torch.ones_like(mask), mask, inputs.token_normalizer)
        return self.coef * (mean_entropy - self.target).abs() * share.detach()


@hookimpl
def trl_basics_register_tricks(register):
    register(EntropyBonus)
