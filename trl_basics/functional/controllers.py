"""KL-coefficient controllers: a fixed β, and the adaptive proportional controller of Ziegler et al. (2019)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

__all__ = ["AdaptiveKLController", "FixedKLController"]


class FixedKLController:
    """Constant KL coefficient β (Ziegler et al. 2019, Fine-Tuning Language Models from Human Preferences, fixed-β
    variant); ``update`` is a no-op so it can stand in for :class:`AdaptiveKLController`."""

    def __init__(self, coef: float) -> None:
        if not coef >= 0:
            raise ValueError(f"FixedKLController: coef must be >= 0, got {coef}")
        self.value = float(coef)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """No-op; returns the (unchanged) coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state_dict: Mapping[str, float]) -> None:
        self.value = float(state_dict["value"])

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value:g})"


class AdaptiveKLController:
    """Adaptive KL coefficient, a log-space proportional controller (Ziegler et al. 2019, Fine-Tuning Language
    Models from Human Preferences):

    e = clip(KL / KL_target - 1, -0.2, 0.2),  β <- β · (1 + e · n_steps / horizon).

    β grows while the measured KL exceeds the target and shrinks below it, by at most 20% per ``horizon`` steps.
    """

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if not init_coef >= 0:
            raise ValueError(f"AdaptiveKLController: init_coef must be >= 0, got {init_coef}")
        if not target > 0:
            raise ValueError(f"AdaptiveKLController: target KL must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        """Adjust β from the KL measured over the last ``n_steps`` samples (or steps); returns the new β."""
        if n_steps < 0:
            raise ValueError(f"AdaptiveKLController: n_steps must be >= 0, got {n_steps}")
        if not math.isfinite(float(current_kl)):
            return self.value  # a NaN or infinite KL measurement says nothing; β must never absorb it
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state_dict: Mapping[str, float]) -> None:
        self.value = float(state_dict["value"])
        self.target = float(state_dict.get("target", self.target))
        self.horizon = float(state_dict.get("horizon", self.horizon))

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value:g}, target={self.target:g}, horizon={self.horizon:g})"
