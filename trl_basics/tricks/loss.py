"""Extra loss terms (stage 5): the entropy bonus. (KL in the loss lives with the other KL options in ``kl.py``.)"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from torch import Tensor

from ..functional import masked_mean
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
        mean_entropy = masked_mean(inputs.entropies, inputs.completion_mask.to(inputs.entropies.dtype))
        ctx.log("mean_entropy", mean_entropy.detach())
        if self.target is None:
            return -self.coef * mean_entropy
        return self.coef * (mean_entropy - self.target).abs()


@hookimpl
def trl_basics_register_tricks(register):
    register(EntropyBonus)
