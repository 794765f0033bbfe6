"""The algorithms of trl_basics: name → summary, trainer class, config class, and the config values of the variant.

One table, read by the package's exports (``trl_basics.RLOOTrainer``, ...), by the ``trl-basics`` command line
(``train ALGO``, ``compare``, ``ablate``, ``demo``) and by the benchmarks. Classes are named as ``"module:Class"``
and imported on first use: reading this table imports neither torch nor TRL, so that ``trl-basics --help`` stays
fast and ``import trl_basics`` stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

PACKAGE = __name__.partition(".")[0]


@dataclass(frozen=True)
class Algorithm:
    name: str
    summary: str
    trainer: str  # "module:Class", imported on use
    config: str  # "module:Class", imported on use
    defaults: dict[str, Any] = field(default_factory=dict)  # config values that define the variant
    tools: bool = False  # the trainer runs TRL's tool loop (tools=, environment_factory=): the GRPO base

    def trainer_class(self) -> type:
        return load(self.trainer)

    def config_class(self) -> type:
        return load(self.config)


def load(path: str) -> Any:
    """The object a ``"module:name"`` path names (the module is imported)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


ALGORITHMS = MappingProxyType(
    {
        "rloo": Algorithm(
            "rloo",
            "RLOO (Ahmadian et al. 2024): leave-one-out baseline over k samples, sequence-level KL in the reward.",
            "trl_basics.rloo:RLOOTrainer",
            "trl_basics.rloo:RLOOConfig",
        ),
        "reinforce_pp": Algorithm(
            "reinforce_pp",
            "REINFORCE++ (Hu 2025): per-token k1 KL in the reward, γ=1 returns, global advantage whitening.",
            "trl_basics.reinforce_pp:ReinforcePlusPlusTrainer",
            "trl_basics.reinforce_pp:ReinforcePlusPlusConfig",
            tools=True,
        ),
        "reinforce_pp_baseline": Algorithm(
            "reinforce_pp_baseline",
            "REINFORCE++-baseline (Hu 2025 v9): group-mean baseline, then global whitening.",
            "trl_basics.reinforce_pp:ReinforcePlusPlusTrainer",
            "trl_basics.reinforce_pp:ReinforcePlusPlusConfig",
            {"baseline": "group"},
            tools=True,
        ),
        "reinforce_ma": Algorithm(
            "reinforce_ma",
            "REINFORCE with a moving-average baseline (Back to Basics Eqs. 7-8).",
            "trl_basics.rloo:ReinforceWithBaselineTrainer",
            "trl_basics.rloo:ReinforceWithBaselineConfig",
        ),
        "ppo_max": Algorithm(
            "ppo_max",
            "PPO-max (Zheng et al. 2023): critic, GAE, running reward norm + clip, token KL, value clipping.",
            "trl_basics.ppo_max:PPOMaxTrainer",
            "trl_basics.ppo_max:PPOMaxConfig",
            tools=True,
        ),
        "grpo": Algorithm(
            "grpo",
            "TRL's GRPO, unchanged (for reference), with trl_basics' perplexity monitor.",
            "trl_basics.monitored_grpo:MonitoredGRPOTrainer",
            "trl:GRPOConfig",
            {"beta": 0.04},
            tools=True,
        ),
    }
)


class UnknownAlgorithmError(KeyError):
    """A name that is not in `ALGORITHMS` (the command line turns it into a usage error with a "did you mean")."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name

    def __str__(self) -> str:
        return f"unknown algorithm {self.name!r}. Choose one of: {', '.join(ALGORITHMS)}"


def get_algorithm(name: str) -> Algorithm:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise UnknownAlgorithmError(name) from None


def package_exports() -> dict[str, str]:
    """Class name → module of every trainer and config class of `ALGORITHMS` that lives in trl_basics: what
    ``trl_basics`` exports (lazily) besides its other names."""
    exports: dict[str, str] = {}
    for algorithm in ALGORITHMS.values():
        for path in (algorithm.trainer, algorithm.config):
            module, _, name = path.partition(":")
            if module.partition(".")[0] == PACKAGE:
                exports.setdefault(name, module)
    return exports


__all__ = ["ALGORITHMS", "Algorithm", "UnknownAlgorithmError", "get_algorithm", "load", "package_exports"]
