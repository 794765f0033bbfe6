from .rloo_config import RLOOConfig
from .rloo_trainer import ReinforceWithBaselineConfig, ReinforceWithBaselineTrainer, RLOOTrainer

__all__ = ["RLOOConfig", "RLOOTrainer", "ReinforceWithBaselineConfig", "ReinforceWithBaselineTrainer"]
