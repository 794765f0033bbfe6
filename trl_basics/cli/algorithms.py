"""The algorithms the command line knows: name → trainer class, config class, and config defaults."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    trainer: str  # "module:Class", imported on use so that `--help` stays fast
    config: str
    defaults: dict[str, Any] = field(default_factory=dict)  # config values that define the variant

    def trainer_class(self) -> type:
        return _load(self.trainer)

    def config_class(self) -> type:
        return _load(self.config)


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


ALGORITHMS = MappingProxyType(
    {
        "rloo": Algorithm(
            "rloo",
            "RLOO (Ahmadian et al. 2024): leave-one-out baseline over k samples, sequence-level KL in the reward.",
            "trl_basics:RLOOTrainer",
            "trl_basics:RLOOConfig",
        ),
        "reinforce_pp": Algorithm(
            "reinforce_pp",
            "REINFORCE++ (Hu 2025): per-token k1 KL in the reward, γ=1 returns, global advantage whitening.",
            "trl_basics:ReinforcePlusPlusTrainer",
            "trl_basics:ReinforcePlusPlusConfig",
        ),
        "reinforce_pp_baseline": Algorithm(
            "reinforce_pp_baseline",
            "REINFORCE++-baseline (Hu 2025 v9): group-mean baseline, then global whitening.",
            "trl_basics:ReinforcePlusPlusTrainer",
            "trl_basics:ReinforcePlusPlusConfig",
            {"baseline": "group"},
        ),
        "reinforce_ma": Algorithm(
            "reinforce_ma",
            "REINFORCE with a moving-average baseline (Back to Basics Eqs. 7-8).",
            "trl_basics:ReinforceWithBaselineTrainer",
            "trl_basics:ReinforceWithBaselineConfig",
        ),
        "ppo_max": Algorithm(
            "ppo_max",
            "PPO-max (Zheng et al. 2023): critic, GAE, running reward norm + clip, token KL, value clipping.",
            "trl_basics:PPOMaxTrainer",
            "trl_basics:PPOMaxConfig",
        ),
        "grpo": Algorithm(
            "grpo",
            "TRL's GRPO, unchanged (for reference), with trl_basics' perplexity monitor.",
            "trl_basics.monitored_grpo:MonitoredGRPOTrainer",
            "trl:GRPOConfig",
            {"beta": 0.04},
        ),
    }
)


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        from .flags import UsageError, did_you_mean

        raise UsageError(
            f"unknown algorithm {name!r}.{did_you_mean(name, ALGORITHMS)} Choose one of: {', '.join(ALGORITHMS)}"
        ) from None
