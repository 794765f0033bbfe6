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


class RewardNoise(Trick):
    """Add Gaussian noise N(0, σ²) to every scorable reward: a noisier reward model, for robustness studies (Back to
    Basics, Ahmadian et al. 2024, compares RLOO and RAFT under reward noise). Runs before every other transform.

    The noise is drawn from a generator seeded with the run's ``seed`` and the round number, so every process (they
    all see the same gathered rewards) adds the same noise, and a resumed run draws what the uninterrupted run drew.
    """

    name = "reward_noise"
    stage = Stage.REWARD
    flag = "reward_noise_std"
    off_flags = MappingProxyType({"reward_noise_std": 0.0})
    order = 5
    summary = "Add Gaussian noise of standard deviation σ to the rewards (a noisier reward model)."
    source = "Ahmadian et al. 2024, Back to Basics (robustness to reward noise)"
    state_settings = ("reward_noise_std",)

    def __init__(self, args: Any = None, std: float = 0.0) -> None:
        super().__init__(args)
        self.std = std
        self.seed = int(getattr(args, "seed", 0) or 0)
        self.rounds = 0

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        std = getattr(args, "reward_noise_std", 0.0)
        return cls(args, std=std) if std else None

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        rewards = rollout.rewards
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rounds)
        self.rounds += 1
        noise = torch.randn(rewards.shape, generator=generator, dtype=torch.float64) * self.std
        ctx.log("std", self.std)
        return rollout.replace(rewards=rewards + noise.to(device=rewards.device, dtype=rewards.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = int(state["rounds"])


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
    register(RewardNoise)
    register(RewardNormalization)
    register(RewardScaling)
    register(RewardClipping)
