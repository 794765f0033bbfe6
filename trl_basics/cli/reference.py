"""TRL's GRPO unchanged, with the monitors trl_basics trainers log (perplexity), so it can be plotted beside them."""

from __future__ import annotations

import trl

from ..callbacks import install_collapse_alarm
from ..pipeline import TrickPipeline
from ..trainer_mixin import TrickTrainerMixin


class MonitoredGRPOTrainer(TrickTrainerMixin, trl.GRPOTrainer):
    """``trl.GRPOTrainer`` with an empty trick pipeline: identical training, plus the ``perplexity`` and ``collapse/*`` metrics."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.trick_pipeline = TrickPipeline()
        self._kl_shaping = None
        install_collapse_alarm(self)  # `collapse_alarm` is not a GRPOConfig field: the default, "warn"
