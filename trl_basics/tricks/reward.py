"""Reward transforms (stage 1): normalization, scaling and clipping of the gathered scalar rewards.

They act on ``rollout.rewards``, the global batch that TRL gathers before computing advantages, so their statistics
are global and every process ends a step with the same running state without any collective.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch

from ..functional import RunningMoments, clip_rewards, masked_moments, normalize_rewards, scale_rewards
from ..hookspecs import hookimpl
from ..types import Rollout, Stage, Trick, TrickContext


class RewardNormalization(Trick):
    """z-score rewards by batch or running moments (PPO-max, Zheng et al. 2023, §5.3 Eq. 18)."""

    name = "reward_norm"
    stage = Stage.REWARD
    flag = "reward_norm"
    off_flags = MappingProxyType({"reward_norm": "none"})
    order = 10
    summary = "Normalize rewards to zero mean, unit variance: over the batch, or with running moments."
    source = "Zheng et al. 2023, Secrets of RLHF Part I, §5.3 (PPO-max)"
    # The running moments are moments of the weighted reward sum.
    state_settings = ("reward_norm", "reward_weights")

    def __init__(self, args: Any = None, mode: str = "running") -> None:
        super().__init__(args)
        self.mode = mode
        self.moments = RunningMoments() if mode == "running" else None

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return None if args.reward_norm == "none" else cls(args, mode=args.reward_norm)

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        rewards = rollout.rewards
        if self.moments is None:
            # The unbiased std matches TRL's nanstd; NaN (unscorable) rewards are left out and stay NaN.
            mean, var, _ = masked_moments(rewards, unbiased=True)
            std = var.sqrt()
        else:
            self.moments.update(rewards)
            mean, std = self.moments.mean, self.moments.std
            ctx.log("running_mean", float(mean))
            ctx.log("running_std", float(std))
        return rollout.replace(rewards=normalize_rewards(rewards, mean, std))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.moments is None else {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.moments is not None:
            self.moments.load_state_dict(state["moments"])
        else:
            super().load_state_dict(state)


class RewardScaling(Trick):
    """Divide rewards by their running standard deviation, keeping the mean (PPO-max reward scaling, Eq. 17)."""

    name = "reward_scale"
    stage = Stage.REWARD
    flag = "reward_scale"
    off_flags = MappingProxyType({"reward_scale": False})
    order = 20
    summary = "Divide rewards by the running standard deviation of all rewards seen so far."
    source = "Zheng et al. 2023, Secrets of RLHF Part I, §5.3; Engstrom et al. 2020"
    # The running moments are of the weighted reward sum, normalized first where reward_norm is on.
    state_settings = ("reward_scale", "reward_norm", "reward_weights")

    def __init__(self, args: Any = None) -> None:
        super().__init__(args)
        self.moments = RunningMoments()

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return cls(args) if args.reward_scale else None

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        self.moments.update(rollout.rewards)
        ctx.log("running_std", float(self.moments.std))
        return rollout.replace(rewards=scale_rewards(rollout.rewards, self.moments.std))

    def state_dict(self) -> dict[str, Any]:
        return {"moments": self.moments.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.moments.load_state_dict(state["moments"])


class RewardClipping(Trick):
    """Clip rewards to ±δ after normalization (PPO-max: δ = 0.3 stable, 0.8 collapses later, Fig. 6)."""

    name = "reward_clip"
    stage = Stage.REWARD
    flag = "reward_clip"
    off_flags = MappingProxyType({"reward_clip": None})
    order = 30
    summary = "Clip rewards to [-δ, δ]."
    source = "Zheng et al. 2023, Secrets of RLHF Part I, §5.3 Eq. 18"

    def __init__(self, args: Any = None, bound: float = 10.0) -> None:
        super().__init__(args)
        self.bound = bound

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return None if args.reward_clip is None else cls(args, bound=args.reward_clip)

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        rewards = rollout.rewards
        scorable = ~torch.isnan(rewards)
        clipped = (rewards.abs() > self.bound) & scorable
        ctx.log("clip_fraction", clipped.sum() / scorable.sum().clamp(min=1))  # 0 when nothing is scorable
        return rollout.replace(rewards=clip_rewards(rewards, self.bound))


@hookimpl
def trl_basics_register_tricks(register):
    register(RewardNormalization)
    register(RewardScaling)
    register(RewardClipping)
