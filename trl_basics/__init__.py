"""trl_basics: RLOO, REINFORCE++, REINFORCE++-baseline, REINFORCE with a moving-average baseline and PPO-max as
drop-in TRL trainers, with their tricks as pluggy plugins switched on by config flags."""

import importlib
from typing import TYPE_CHECKING

from .algorithms import package_exports

if TYPE_CHECKING:  # for type checkers and IDEs (the names of __all__); at run time they load lazily
    from .config import TrickArguments, validate_trick_arguments  # noqa: F401
    from .hookspecs import hookimpl, hookspec  # noqa: F401
    from .monitored_grpo import MonitoredGRPOTrainer  # noqa: F401
    from .pipeline import TrickPipeline  # noqa: F401
    from .plugins import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP, Registry, get_plugin_manager  # noqa: F401
    from .ppo_max import CollapseAlarmCallback, PPOMaxConfig, PPOMaxTrainer  # noqa: F401
    from .reinforce_pp import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer  # noqa: F401
    from .rloo import ReinforceWithBaselineConfig, ReinforceWithBaselineTrainer, RLOOConfig, RLOOTrainer  # noqa: F401
    from .types import AdvantageEstimator, LossInputs, Requirements, Rollout, Stage, Trick, TrickContext  # noqa: F401

# name -> module; imported on first use, so that `trl-basics --help` needs no torch. The trainer and config classes
# come from the algorithm table (`trl_basics.algorithms`).
_EXPORTS = {
    "TrickArguments": "trl_basics.config",
    "validate_trick_arguments": "trl_basics.config",
    "hookimpl": "trl_basics.hookspecs",
    "hookspec": "trl_basics.hookspecs",
    "TrickPipeline": "trl_basics.pipeline",
    "DISABLE_AUTOLOAD_ENV": "trl_basics.plugins",
    "ENTRY_POINT_GROUP": "trl_basics.plugins",
    "Registry": "trl_basics.plugins",
    "get_plugin_manager": "trl_basics.plugins",
    "CollapseAlarmCallback": "trl_basics.ppo_max",
    "AdvantageEstimator": "trl_basics.types",
    "LossInputs": "trl_basics.types",
    "Requirements": "trl_basics.types",
    "Rollout": "trl_basics.types",
    "Stage": "trl_basics.types",
    "Trick": "trl_basics.types",
    "TrickContext": "trl_basics.types",
} | package_exports()

__version__ = "0.1.0"

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 - every lazily exported name


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
