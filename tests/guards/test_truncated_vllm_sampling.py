"""The warning for vLLM sampling with top-k/top-p under TRL's importance-sampling correction."""

from types import SimpleNamespace

import pytest

from trl_basics.guards import warn_truncated_vllm_sampling


def settings(**overrides):
    fields = {
        "use_vllm": True,
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": "token_truncate",
        "top_k": 0,
        "top_p": 1.0,
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize("overrides", [{"top_k": 5}, {"top_p": 0.8}, {"top_k": 3, "top_p": 0.5}])
def test_truncated_sampling_with_the_correction_warns(overrides, caplog):
    with caplog.at_level("WARNING", logger="trl_basics.guards"):
        message = warn_truncated_vllm_sampling(settings(**overrides))
    assert message is not None and "truncated" in message and "vllm_importance_sampling_correction=False" in message
    assert message in caplog.text


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # full distribution
        {"top_k": None, "top_p": None},
        {"top_k": 5, "vllm_importance_sampling_correction": False},
        {"top_p": 0.8, "use_vllm": False},
    ],
)
def test_no_warning_without_truncation_or_without_the_correction(overrides, caplog):
    with caplog.at_level("WARNING", logger="trl_basics.guards"):
        assert warn_truncated_vllm_sampling(settings(**overrides)) is None
    assert "truncated" not in caplog.text
