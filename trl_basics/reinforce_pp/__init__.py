from .reinforce_pp_config import ReinforcePlusPlusConfig
from .reinforce_pp_trainer import ReinforcePlusPlusTrainer

__all__ = ["ReinforcePlusPlusConfig", "ReinforcePlusPlusTrainer"]
