"""A length penalty on the reward, as a trl_basics trick plugin.

r' = r - coef · |L - L_target|  (or r - coef · L without a target), where L is the completion's token count.
"""

from __future__ import annotations

from typing import Any

from trl_basics import Rollout, Stage, Trick, TrickContext, hookimpl


class LengthPenalty(Trick):
    name = "length_penalty"
    stage = Stage.REWARD
    summary = "Subtract coef·|length - target_length| (or coef·length) from each completion's reward."
    source = "Length control for RLHF, e.g. Singhal et al. 2023, 'A Long Way to Go'"

    def __init__(self, args: Any = None, coef: float = 0.01, target_length: int | None = None) -> None:
        super().__init__(args)
        if coef < 0:
            raise ValueError(f"length_penalty coef={coef} is negative; use a coefficient >= 0")
        self.coef = coef
        self.target_length = target_length

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        if rollout.completion_lengths is None:
            raise ValueError("length_penalty needs rollout.completion_lengths; the trainer did not provide them")
        lengths = rollout.completion_lengths.to(rollout.rewards.dtype)
        excess = lengths if self.target_length is None else (lengths - self.target_length).abs()
        penalty = self.coef * excess
        ctx.log("mean_penalty", penalty.mean() if penalty.numel() else 0.0)  # a tensor: read with the step's metrics
        # NaN (unscorable) rewards stay NaN: NaN - x = NaN.
        return rollout.replace(rewards=rollout.rewards - penalty)


@hookimpl
def trl_basics_register_tricks(register):
    register(LengthPenalty)


__all__ = ["LengthPenalty"]
