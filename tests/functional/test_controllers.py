"""Tests for trl_basics.functional.controllers."""

from __future__ import annotations

import pytest
import torch

from trl_basics.functional import AdaptiveKLController, FixedKLController


def test_adaptive_kl_anchor() -> None:
    controller = AdaptiveKLController(0.1, target=6.0, horizon=1e4)
    assert controller.update(12.0, 512) == pytest.approx(0.101024, abs=1e-12)
    assert controller.value == pytest.approx(0.101024, abs=1e-12)


def test_adaptive_kl_error_is_clipped_both_ways() -> None:
    below = AdaptiveKLController(0.1, 6.0, 1e4)
    below.update(torch.tensor(3.0), 512)  # KL/target - 1 = -0.5 -> -0.2
    assert below.value == pytest.approx(0.1 * (1 - 0.2 * 512 / 1e4))
    near = AdaptiveKLController(0.1, 6.0, 1e4)
    near.update(6.6, 1000)  # error 0.1, inside the clip
    assert near.value == pytest.approx(0.1 * (1 + 0.1 * 1000 / 1e4))
    on_target = AdaptiveKLController(0.1, 6.0, 1e4)
    on_target.update(6.0, 1000)
    assert on_target.value == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_coef": 0.1, "target": 0.0, "horizon": 1e4}, "target"),
        ({"init_coef": 0.1, "target": -1.0, "horizon": 1e4}, "target"),
        ({"init_coef": 0.1, "target": 6.0, "horizon": 0.0}, "horizon"),
        ({"init_coef": -0.1, "target": 6.0, "horizon": 1e4}, "init_coef"),
    ],
)
def test_adaptive_kl_validates_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaptiveKLController(**kwargs)


def test_adaptive_kl_state_dict_round_trip() -> None:
    controller = AdaptiveKLController(0.15, 6.0, 1e4)
    controller.update(10.0, 256)
    state = controller.state_dict()
    assert all(isinstance(v, float) for v in state.values())
    restored = AdaptiveKLController(1.0, 1.0, 1.0)
    restored.load_state_dict(state)
    assert restored.update(2.0, 64) == controller.update(2.0, 64)


def test_fixed_kl_controller_is_constant() -> None:
    controller = FixedKLController(0.05)
    assert controller.update(100.0, 512) == 0.05 and controller.value == 0.05
    restored = FixedKLController(0.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05
    with pytest.raises(ValueError, match="coef"):
        FixedKLController(-1.0)
