"""trl_basics: RLOO, REINFORCE++, REINFORCE++-baseline, REINFORCE with a moving-average baseline and PPO-max as
drop-in TRL trainers, with their tricks as pluggy plugins switched on by config flags."""

from .config import TrickArguments, validate_trick_arguments
from .hookspecs import hookimpl, hookspec
from .pipeline import TrickPipeline
from .plugins import DISABLE_AUTOLOAD_ENV, ENTRY_POINT_GROUP, Registry, get_plugin_manager
from .ppo_max import CollapseAlarmCallback, PPOMaxConfig, PPOMaxTrainer
from .reinforce_pp import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
from .rloo import ReinforceWithBaselineConfig, ReinforceWithBaselineTrainer, RLOOConfig, RLOOTrainer
from .types import AdvantageEstimator, LossInputs, Rollout, Stage, Trick, TrickContext

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
