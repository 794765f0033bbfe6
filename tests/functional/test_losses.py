"""Tests for trl_basics.functional.losses."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import GARBAGE, append_garbage, fill_masked, random_batch, run_in_lockstep, split_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_basics.functional import clipped_policy_loss, clipped_value_loss, sequence_clipped_policy_loss

FAST = settings(max_examples=50, deadline=None)


def _policy_inputs(ratios: list[float], advantages: list[float]) -> tuple[torch.Tensor, ...]:
    """One token per row with the given ratio ρ and advantage A."""
    old = torch.full((len(ratios), 1), -2.0, dtype=torch.float64)
    logprobs = old + torch.tensor(ratios, dtype=torch.float64).log().unsqueeze(1)
    return logprobs, old, torch.tensor(advantages, dtype=torch.float64), torch.ones(len(ratios), 1)


# ----------------------------------------------------------------------------------------------------------------
# Hand-checked anchors


def test_dual_clip_anchor() -> None:
    logprobs, old, advantages, mask = _policy_inputs([5.0], [-1.0])
    plain, plain_clipped = clipped_policy_loss(logprobs, old, advantages, mask, epsilon_low=0.2)
    dual, dual_clipped = clipped_policy_loss(logprobs, old, advantages, mask, epsilon_low=0.2, dual_clip=3.0)
    assert plain.item() == pytest.approx(5.0) and not plain_clipped.item()
    assert dual.item() == pytest.approx(3.0) and dual_clipped.item()


def test_clipped_surrogate_regions() -> None:
    ratios = [1.5, 0.5, 0.5, 1.5, 1.1]
    advantages = [1.0, 1.0, -1.0, -1.0, 2.0]
    loss, clipped = clipped_policy_loss(*_policy_inputs(ratios, advantages))
    assert loss[:, 0].tolist() == pytest.approx([-1.2, -0.5, 0.8, 1.5, -2.2])
    assert clipped[:, 0].tolist() == [True, False, True, False, False]
    # Asymmetric clip (DAPO-style clip-higher).
    loss_high, _ = clipped_policy_loss(*_policy_inputs([1.5], [1.0]), epsilon_high=0.28)
    assert loss_high.item() == pytest.approx(-1.28)
    # Dual clip never touches positive advantages.
    loss_dual, _ = clipped_policy_loss(*_policy_inputs(ratios, advantages), dual_clip=3.0)
    torch.testing.assert_close(loss_dual, loss)


def test_value_clip_anchor() -> None:
    values, old_values, returns = torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[1.2]])
    mask = torch.ones(1, 1)
    loss, clip_fraction = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.125) and clip_fraction.item() == 1.0  # V_clip = 0.7
    plain, plain_fraction = clipped_value_loss(values, old_values, returns, mask, clip_range=None)
    assert plain.item() == pytest.approx(0.5 * 0.2**2) and plain_fraction.item() == 0.0


def test_value_loss_token_mean_with_padding() -> None:
    values = torch.tensor([[1.0, 0.0, float("nan")]])
    old_values = torch.tensor([[1.0, 0.0, 5.0]])
    returns = torch.tensor([[2.0, 0.0, float("inf")]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clip_fraction = clipped_value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx(0.5 * (1.0 + 0.0) / 2) and clip_fraction.item() == 0.0


def test_sequence_loss_matches_trl_formula() -> None:
    logprobs = torch.tensor([[0.1, 0.1, 7.0], [-0.3, 0.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[0.0, 0.0, -9.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -0.5], dtype=torch.float64)
    loss, clipped = sequence_clipped_policy_loss(logprobs, old, advantages, mask, log_ratio_clamp=None)
    ratio = torch.exp((logprobs - old).mul(mask).sum(-1))
    expected = -torch.min(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)  # TRL's inline expression
    torch.testing.assert_close(loss, expected)
    assert loss[0].item() == pytest.approx(-1.2) and clipped.tolist() == [True, True]


def test_log_ratio_clamp_keeps_losses_finite() -> None:
    logprobs = torch.tensor([[100.0]], dtype=torch.float32)
    old = torch.tensor([[-100.0]], dtype=torch.float32)
    advantages = torch.tensor([-1.0])
    loss, _ = clipped_policy_loss(logprobs, old, advantages, torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    seq_loss, _ = sequence_clipped_policy_loss(logprobs, old, advantages, torch.ones(1, 1))
    assert torch.isfinite(seq_loss).all()


def test_argument_validation() -> None:
    inputs = _policy_inputs([1.0], [1.0])
    with pytest.raises(ValueError, match="dual_clip"):
        clipped_policy_loss(*inputs, dual_clip=1.0)
    with pytest.raises(ValueError, match="epsilon_low"):
        clipped_policy_loss(*inputs, epsilon_low=-0.1)
    with pytest.raises(ValueError, match="epsilon_high"):
        sequence_clipped_policy_loss(inputs[0], inputs[1], inputs[2], inputs[3], epsilon_high=-0.1)
    with pytest.raises(ValueError, match="advantages"):
        clipped_policy_loss(inputs[0], inputs[1], torch.ones(1, 2), inputs[3])
    with pytest.raises(ValueError, match="clip_range"):
        clipped_value_loss(torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), torch.ones(1, 1), clip_range=0.0)


def test_policy_gradient_is_clean_with_masked_nan() -> None:
    logprobs = torch.tensor([[-1.0, -1.0, float("nan")]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.5, float("nan")]])
    mask = torch.tensor([[1, 1, 0]])
    advantages = torch.tensor([[2.0, 2.0, float("nan")]])
    loss, clipped = clipped_policy_loss(logprobs, old, advantages, mask)
    loss.sum().backward()
    # token 0: ratio 1, unclipped, d(-A rho)/d logp = -A rho = -2; token 1: ratio e^0.5 > 1.2 with A > 0 -> clipped.
    assert logprobs.grad[0].tolist() == pytest.approx([-2.0, 0.0, 0.0])
    assert clipped[0].tolist() == [False, True, False]


# ----------------------------------------------------------------------------------------------------------------
# Properties


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    length=st.integers(1, 8),
    pad=st.integers(1, 4),
    garbage=st.sampled_from(GARBAGE),
    per_token=st.booleans(),
    dual_clip=st.sampled_from([None, 3.0]),
    prefix=st.booleans(),
)
def test_losses_ignore_masked_garbage(
    seed: int,
    batch: int,
    length: int,
    pad: int,
    garbage: float,
    per_token: bool,
    dual_clip: float | None,
    prefix: bool,
) -> None:
    old, mask, gen = random_batch(seed, batch, length, prefix_mask=prefix)
    logprobs = old + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    shape = (batch, length) if per_token else (batch,)
    advantages = torch.randn(shape, generator=gen, dtype=torch.float64)
    returns = torch.randn(batch, length, generator=gen, dtype=torch.float64)

    def dirty(t: torch.Tensor, value: float) -> torch.Tensor:
        return append_garbage(fill_masked(t, mask, value), mask, pad, value)[0]

    dirty_mask = append_garbage(old, mask, pad, 0.0)[1]
    dirty_adv = dirty(advantages, garbage) if per_token else advantages

    clean_loss, clean_clipped = clipped_policy_loss(logprobs, old, advantages, mask, dual_clip=dual_clip)
    loss, clipped = clipped_policy_loss(
        dirty(logprobs, garbage), dirty(old, -garbage), dirty_adv, dirty_mask, dual_clip=dual_clip
    )
    assert torch.equal(loss[:, :length], clean_loss) and torch.equal(clipped[:, :length], clean_clipped)
    assert (loss[~dirty_mask] == 0).all() and not clipped[~dirty_mask].any()

    if not per_token:
        clean_seq = sequence_clipped_policy_loss(logprobs, old, advantages, mask)
        dirty_seq = sequence_clipped_policy_loss(dirty(logprobs, garbage), dirty(old, garbage), advantages, dirty_mask)
        # A longer row may change the summation order of the log-ratio, hence closeness rather than equality.
        torch.testing.assert_close(dirty_seq[0], clean_seq[0], rtol=1e-12, atol=1e-12)
        assert torch.equal(dirty_seq[1], clean_seq[1])

    values = logprobs
    clean_value = clipped_value_loss(values, old, returns, mask)
    dirty_value = clipped_value_loss(dirty(values, garbage), dirty(old, garbage), dirty(returns, -garbage), dirty_mask)
    for a, b in zip(clean_value, dirty_value, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 6),
    length=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 6), min_size=1, max_size=2),
)
def test_value_loss_sums_to_global_mean_across_processes(seed: int, batch: int, length: int, cuts: list[int]) -> None:
    values, mask, gen = random_batch(seed, batch, length)
    old_values = values + 0.3 * torch.randn(batch, length, generator=gen, dtype=torch.float64)
    returns = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    shards = split_rows([min(c, batch) for c in cuts], values, old_values, returns, mask)
    results = run_in_lockstep(lambda s, reduce_fn: clipped_value_loss(*s, reduce_fn=reduce_fn), shards)
    single_loss, single_fraction = clipped_value_loss(values, old_values, returns, mask)
    torch.testing.assert_close(sum(loss for loss, _ in results), single_loss)
    for _, fraction in results:
        torch.testing.assert_close(fraction, single_fraction)
