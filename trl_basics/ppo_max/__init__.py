from .callbacks import CollapseAlarmCallback, CollapseSignals
from .critic import Critic, CriticStats, critic_values, load_value_model
from .ppo_max_config import CODE_SETTINGS, PAPER_SETTINGS, PPOMaxConfig
from .ppo_max_trainer import PPOMaxTrainer

__all__ = [
    "CODE_SETTINGS",
    "PAPER_SETTINGS",
    "CollapseAlarmCallback",
    "CollapseSignals",
    "Critic",
    "CriticStats",
    "PPOMaxConfig",
    "PPOMaxTrainer",
    "critic_values",
    "load_value_model",
]
