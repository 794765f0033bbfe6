"""Advantage transforms (stage 4): global whitening and clipping."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch

from ..functional import masked_whiten
from ..hookspecs import hookimpl
from ..types import Rollout, Stage, Trick, TrickContext


def _advantage_mask(rollout: Rollout) -> torch.Tensor | None:
    """Token mask for (B, T) advantages, so every active token counts once; sequence-level (B,) advantages count
    every row once (NaN rows are skipped). The estimator's level therefore decides the weighting: trainers defined
    per token (REINFORCE++) ask for (B, T) advantages (``tricks.estimators.token_level_estimator``)."""
    advantages = rollout.advantages
    if advantages.dim() == 2 and rollout.completion_mask is not None:
        return rollout.completion_mask
    return None


class AdvantageWhitening(Trick):
    """(A - μ)/σ over all active entries of all processes (REINFORCE++ global advantage normalization, v9 Eq. 5).

    Token-level (B, T) advantages are whitened over all active tokens, token-weighted as in OpenRLHF and verl;
    sequence-level (B,) advantages (RLOO, moving-average REINFORCE) over completions, one weight per completion.
    Population variance, rsqrt(Var + 1e-8), one collective for the statistics.
    """

    name = "advantage_whiten"
    stage = Stage.ADVANTAGE_TRANSFORM
    flag = "whiten_advantages"
    off_flags = MappingProxyType({"whiten_advantages": False, "whiten_advantages_center_only": False})
    order = 10
    summary = (
        "Whiten advantages with mean and std over all active tokens (token-level advantages) or completions "
        "(sequence-level ones) of all processes (optionally only centre)."
    )
    source = "Hu 2025, REINFORCE++ Eq. 8 (v1) / Eq. 5 (v9); Zheng et al. 2023 Eq. 19"

    def __init__(self, args: Any = None, center_only: bool = False) -> None:
        super().__init__(args)
        self.center_only = center_only

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return cls(args, center_only=args.whiten_advantages_center_only) if args.whiten_advantages else None

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        if rollout.advantages is None:
            raise ValueError("whiten_advantages needs advantages, but no advantage estimator produced any")
        mask = _advantage_mask(rollout)
        whitened = masked_whiten(
            rollout.advantages, mask, center=True, scale=not self.center_only, reduce_fn=ctx.distributed_reduce
        )
        # Unscorable (NaN) rows stay NaN so that the pipeline zeroes them afterwards, as TRL does.
        whitened = torch.where(torch.isnan(rollout.advantages), rollout.advantages, whitened)
        return rollout.replace(advantages=whitened)


class AdvantageClipping(Trick):
    """Clip advantages to ±c (PPO-max, Zheng et al. 2023 Eq. 19; c = 0.12 acts like reward clipping)."""

    name = "advantage_clip"
    stage = Stage.ADVANTAGE_TRANSFORM
    flag = "advantage_clip"
    off_flags = MappingProxyType({"advantage_clip": None})
    order = 20
    summary = "Clip advantages to [-c, c]."
    source = "Zheng et al. 2023, Secrets of RLHF Part I, §5.3 Eq. 19"

    def __init__(self, args: Any = None, bound: float = 0.12) -> None:
        super().__init__(args)
        self.bound = bound

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return None if args.advantage_clip is None else cls(args, bound=args.advantage_clip)

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        if rollout.advantages is None:
            raise ValueError("advantage_clip needs advantages, but no advantage estimator produced any")
        advantages = rollout.advantages
        mask = _advantage_mask(rollout)
        active = ~torch.isnan(advantages) if mask is None else (mask.bool() & ~torch.isnan(advantages))
        clipped = (advantages.abs() > self.bound) & active
        totals = ctx.reduce_sum(torch.stack([clipped.sum(), active.sum()]).to(torch.float32))
        ctx.log("clip_fraction", totals[0] / totals[1].clamp(min=1.0))
        return rollout.replace(advantages=advantages.clamp(-self.bound, self.bound))


@hookimpl
def trl_basics_register_tricks(register):
    register(AdvantageWhitening)
    register(AdvantageClipping)
