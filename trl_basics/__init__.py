"""trl_basics: RLOO, REINFORCE++, REINFORCE++-baseline, REINFORCE with a moving-average baseline and PPO-max as
drop-in TRL trainers, with their tricks as pluggy plugins switched on by config flags."""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .config import TrickArguments, validate_trick_arguments
    from .hookspecs import hookimpl, hookspec
    from .pipeline import TrickPipeline
    from .plugins import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP, Registry, get_plugin_manager
    from .ppo_max import CollapseAlarmCallback, PPOMaxConfig, PPOMaxTrainer
    from .reinforce_pp import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
    from .rloo import ReinforceWithBaselineConfig, ReinforceWithBaselineTrainer, RLOOConfig, RLOOTrainer
    from .types import AdvantageEstimator, LossInputs, Rollout, Stage, Trick, TrickContext

_EXPORTS = {  # name -> submodule; imported on first use, so that `trl-basics --help` needs no torch
    "TrickArguments": "config",
    "validate_trick_arguments": "config",
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
    "TrickPipeline": "pipeline",
    "DISABLE_AUTOLOAD_ENV": "plugins",
    "ENTRY_POINT_GROUP": "plugins",
    "Registry": "plugins",
    "get_plugin_manager": "plugins",
    "CollapseAlarmCallback": "ppo_max",
    "PPOMaxConfig": "ppo_max",
    "PPOMaxTrainer": "ppo_max",
    "ReinforcePlusPlusConfig": "reinforce_pp",
    "ReinforcePlusPlusTrainer": "reinforce_pp",
    "ReinforceWithBaselineConfig": "rloo",
    "ReinforceWithBaselineTrainer": "rloo",
    "RLOOConfig": "rloo",
    "RLOOTrainer": "rloo",
    "AdvantageEstimator": "types",
    "LossInputs": "types",
    "Rollout": "types",
    "Stage": "types",
    "Trick": "types",
    "TrickContext": "types",
}

__version__ = "0.1.0"

__all__ = [
    "DISABLE_AUTOLOAD_ENV",
    "ENTRY_POINT_GROUP",
    "AdvantageEstimator",
    "CollapseAlarmCallback",
    "LossInputs",
    "PPOMaxConfig",
    "PPOMaxTrainer",
    "RLOOConfig",
    "RLOOTrainer",
    "Registry",
    "ReinforcePlusPlusConfig",
    "ReinforcePlusPlusTrainer",
    "ReinforceWithBaselineConfig",
    "ReinforceWithBaselineTrainer",
    "Rollout",
    "Stage",
    "Trick",
    "TrickArguments",
    "TrickContext",
    "TrickPipeline",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "validate_trick_arguments",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
