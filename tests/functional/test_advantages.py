"""Tests for trl_basics.functional.advantages."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import GARBAGE, append_garbage, fill_masked, random_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_basics.functional import (
    discounted_cumsum,
    discounted_returns,
    gae_advantages,
    group_mean_advantages,
    kl_token_penalty,
    masked_whiten,
    moving_average_advantages,
    outcome_token_rewards,
    rloo_advantages,
)

NAN = float("nan")
FAST = settings(max_examples=50, deadline=None)


def _naive_discounted_cumsum(x: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """Reference: the textbook backward recursion y_t = x_t + discount * y_{next(t)}, one token at a time; a masked
    position carries the running sum over unchanged (a hole is transparent)."""
    x = torch.where(mask.bool(), x, 0.0)
    y = torch.zeros_like(x)
    running = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1] - 1, -1, -1):
        running = torch.where(mask[..., t].bool(), x[..., t] + discount * running, running)
        y[..., t] = running
    return torch.where(mask.bool(), y, 0.0)


def _naive_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Reference GAE for right-padded masks: the per-token recursion A_t = δ_t + γλ A_{t+1}."""
    mask = mask.bool()
    values = torch.where(mask, values, 0.0)
    rewards = torch.where(mask, rewards, 0.0)
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in range(values.shape[1] - 1, -1, -1):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = torch.where(mask[:, t], delta + gamma * lam * last, 0.0)
        advantages[:, t] = last
    return advantages, torch.where(mask, advantages + values, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Hand-checked anchors (algorithms.md §9)


def test_reinforce_pp_returns_anchors() -> None:
    ones = torch.ones(1, 3)
    assert discounted_returns(torch.tensor([[0.0, 0.0, 1.0]]), ones, 0.5)[0].tolist() == [0.25, 0.5, 1.0]
    token_rewards = outcome_token_rewards(torch.tensor([1.0]), ones) + kl_token_penalty(
        torch.tensor([[0.1, 0.2, 0.3]]), ones, 0.5
    )
    assert discounted_returns(token_rewards, ones)[0].tolist() == pytest.approx([0.7, 0.75, 0.85])


@pytest.mark.parametrize(
    ("lam", "expected"),
    [(0.95, [0.45125, 0.475, 0.5]), (0.9, [0.405, 0.45, 0.5]), (1.0, [0.5, 0.5, 0.5])],
)
def test_gae_anchors(lam: float, expected: list[float]) -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0, 7.0, NAN]])  # the last two positions are padding
    values = torch.tensor([[0.5, 0.5, 0.5, 3.0, float("inf")]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=lam)
    assert advantages[0].tolist() == pytest.approx([*expected, 0.0, 0.0])
    assert returns[0].tolist() == pytest.approx([a + 0.5 for a in expected] + [0.0, 0.0])
    if lam == 0.95:
        assert returns[0, :3].tolist() == pytest.approx([0.95125, 0.975, 1.0])


def test_rloo_trl_docs_vector() -> None:
    legacy = torch.tensor([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0], [5.0, 6.0, 7.0], [8.0, 9.0, 10.0]])  # [k, B]
    k = legacy.shape[0]
    # TRL 1.16 layout: the k samples of each prompt are consecutive.
    trl_layout = legacy.T.reshape(-1)
    assert trl_layout.tolist() == [1, 2, 5, 8, 2, 3, 6, 9, 3, 4, 7, 10]
    advantages = rloo_advantages(trl_layout, k)
    expected = [-4.0, -8 / 3, 4 / 3, 16 / 3]
    for group in advantages.view(-1, k).tolist():
        assert group == pytest.approx(expected)
    # The legacy [k, B] computation (column = prompt) gives the same numbers: adv[0] = -4, adv[7] = 4/3.
    legacy_adv = legacy - (legacy.sum(0, keepdim=True) - legacy) / (k - 1)
    flat = legacy_adv.reshape(-1)
    assert flat[0].item() == pytest.approx(-4.0) and flat[7].item() == pytest.approx(4 / 3)
    torch.testing.assert_close(advantages.view(-1, k).T, legacy_adv)


def test_rloo_three_samples() -> None:
    assert rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 3).tolist() == [-1.5, 0.0, 1.5]


def test_rloo_excludes_unscorable_samples_from_baselines() -> None:
    out = rloo_advantages(torch.tensor([1.0, NAN, 3.0, 5.0, 2.0, 4.0, 6.0, 8.0]), 4)
    # Group 1: scorable [1, 3, 5] -> baselines [4, 3, 2]; the NaN sample stays NaN.
    assert out[0].item() == pytest.approx(-3.0) and out[2].item() == pytest.approx(0.0)
    assert out[3].item() == pytest.approx(3.0) and math.isnan(out[1].item())
    # Group 2 is fully scorable: 4/3 * (r - 5).
    assert out[4:].tolist() == pytest.approx([-4.0, -4 / 3, 4 / 3, 4.0])


def test_rloo_single_scorable_sample_gives_nan() -> None:
    out = rloo_advantages(torch.tensor([NAN, 2.0, NAN, 1.0, 1.0, 1.0]), 3)
    assert torch.isnan(out[:3]).all()
    assert out[3:].tolist() == [0.0, 0.0, 0.0]


def test_rloo_validation() -> None:
    with pytest.raises(ValueError, match="num_generations"):
        rloo_advantages(torch.tensor([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="num_generations"):
        rloo_advantages(torch.tensor([1.0, 2.0, 3.0]), 2)


def test_reinforce_pp_baseline_anchor() -> None:
    advantages = group_mean_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    assert advantages.tolist() == [0.5, -0.5, 0.0, 0.0]
    population = masked_whiten(advantages, unbiased=False)
    unbiased = masked_whiten(advantages, unbiased=True)
    assert population.tolist() == pytest.approx([1.41421, -1.41421, 0.0, 0.0], abs=1e-5)
    assert unbiased.tolist() == pytest.approx([1.224745, -1.224745, 0.0, 0.0], abs=1e-6)


def test_group_mean_keeps_nan() -> None:
    out = group_mean_advantages(torch.tensor([1.0, NAN, 3.0]), 3)
    assert out[0].item() == -1.0 and out[2].item() == 1.0 and math.isnan(out[1].item())


def test_moving_average_advantages() -> None:
    out = moving_average_advantages(torch.tensor([1.0, 3.0, NAN]), 2.0)
    assert out[:2].tolist() == [-1.0, 1.0] and math.isnan(out[2].item())
    assert moving_average_advantages(torch.tensor([1.0]), torch.tensor(0.5)).tolist() == [0.5]


def test_argument_validation() -> None:
    x, mask = torch.ones(1, 3), torch.ones(1, 3)
    with pytest.raises(ValueError, match="discount"):
        discounted_cumsum(x, mask, 1.5)
    with pytest.raises(ValueError, match="chunk_size"):
        discounted_cumsum(x, mask, 0.5, chunk_size=0)
    with pytest.raises(ValueError, match="lam"):
        gae_advantages(x, x, mask, lam=-0.1)


# ----------------------------------------------------------------------------------------------------------------
# Properties


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    length=st.integers(1, 40),
    discount=st.sampled_from([0.0, 0.3, 0.9, 0.99, 1.0]),
    chunk_size=st.sampled_from([1, 2, 3, 7, 16, 256]),
    prefix=st.booleans(),
)
def test_chunked_discounted_cumsum_matches_naive_loop(
    seed: int, batch: int, length: int, discount: float, chunk_size: int, prefix: bool
) -> None:
    x, mask, _ = random_batch(seed, batch, length, prefix_mask=prefix)
    got = discounted_cumsum(x, mask, discount, chunk_size=chunk_size)
    torch.testing.assert_close(got, _naive_discounted_cumsum(x, mask, discount), rtol=1e-10, atol=1e-10)


def test_chunked_discounted_cumsum_float32_and_bfloat16() -> None:
    x, mask, _ = random_batch(0, 3, 300, dtype=torch.float32)
    reference = _naive_discounted_cumsum(x.double(), mask, 0.97)
    torch.testing.assert_close(
        discounted_cumsum(x, mask, 0.97, chunk_size=64).double(), reference, rtol=1e-5, atol=1e-5
    )
    low = discounted_cumsum(x.bfloat16(), mask, 0.97, chunk_size=64)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(
        low.double(), _naive_discounted_cumsum(x.bfloat16().double(), mask, 0.97), rtol=2e-2, atol=5e-2
    )


@FAST
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), length=st.integers(1, 12), prefix=st.booleans())
def test_returns_with_gamma_one_are_the_reverse_cumsum(seed: int, batch: int, length: int, prefix: bool) -> None:
    x, mask, _ = random_batch(seed, batch, length, prefix_mask=prefix)
    masked_x = torch.where(mask, x, 0.0)
    expected = torch.where(mask, masked_x.flip(-1).cumsum(-1).flip(-1), 0.0)
    torch.testing.assert_close(discounted_returns(x, mask, 1.0), expected)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    length=st.integers(1, 12),
    gamma=st.sampled_from([0.5, 0.9, 1.0]),
)
def test_gae_with_lambda_one_is_returns_minus_values(seed: int, batch: int, length: int, gamma: float) -> None:
    rewards, mask, gen = random_batch(seed, batch, length)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    advantages, returns = gae_advantages(rewards, values, mask, gamma=gamma, lam=1.0)
    expected = torch.where(mask, discounted_returns(rewards, mask, gamma) - values, 0.0)
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, discounted_returns(rewards, mask, gamma))


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    length=st.integers(1, 12),
    gamma=st.sampled_from([0.8, 1.0]),
    lam=st.sampled_from([0.0, 0.9, 0.95]),
)
def test_gae_matches_the_per_token_recursion(seed: int, batch: int, length: int, gamma: float, lam: float) -> None:
    rewards, mask, gen = random_batch(seed, batch, length)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    for got, want in zip(
        gae_advantages(rewards, values, mask, gamma, lam), _naive_gae(rewards, values, mask, gamma, lam), strict=True
    ):
        torch.testing.assert_close(got, want)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    length=st.integers(1, 20),
    pad=st.integers(1, 9),
    garbage=st.sampled_from(GARBAGE),
    gamma=st.sampled_from([0.7, 1.0]),
    prefix=st.booleans(),
)
def test_returns_and_gae_ignore_masked_garbage(
    seed: int, batch: int, length: int, pad: int, garbage: float, gamma: float, prefix: bool
) -> None:
    rewards, mask, gen = random_batch(seed, batch, length, prefix_mask=prefix)
    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    dirty_rewards, dirty_mask = append_garbage(fill_masked(rewards, mask, garbage), mask, pad, garbage)
    dirty_values, _ = append_garbage(fill_masked(values, mask, -garbage), mask, pad, garbage)

    clean_returns = discounted_returns(rewards, mask, gamma)
    dirty_returns = discounted_returns(dirty_rewards, dirty_mask, gamma)
    torch.testing.assert_close(dirty_returns[:, :length], clean_returns, rtol=1e-12, atol=1e-12)
    assert (dirty_returns[~dirty_mask] == 0).all()

    # Small chunks so that the padding shifts chunk boundaries too.
    dirty_chunked = discounted_cumsum(dirty_rewards, dirty_mask, gamma * 0.9, chunk_size=4)
    clean_chunked = discounted_cumsum(rewards, mask, gamma * 0.9, chunk_size=4)
    torch.testing.assert_close(dirty_chunked[:, :length], clean_chunked, rtol=1e-12, atol=1e-12)

    clean_gae = gae_advantages(rewards, values, mask, gamma, 0.9)
    dirty_gae = gae_advantages(dirty_rewards, dirty_values, dirty_mask, gamma, 0.9)
    for clean, dirty in zip(clean_gae, dirty_gae, strict=True):
        torch.testing.assert_close(dirty[:, :length], clean, rtol=1e-12, atol=1e-12)
        assert (dirty[~dirty_mask] == 0).all()


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    num_prompts=st.integers(1, 4),
    num_generations=st.integers(2, 6),
    nan_fraction=st.sampled_from([0.0, 0.3]),
)
def test_rloo_matches_trl_formula(seed: int, num_prompts: int, num_generations: int, nan_fraction: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(num_prompts * num_generations, generator=gen, dtype=torch.float64)
    rewards[torch.rand(rewards.shape, generator=gen) < nan_fraction] = NAN
    got = rloo_advantages(rewards, num_generations).view(num_prompts, num_generations)
    for group, adv in zip(rewards.view(num_prompts, num_generations), got, strict=True):
        scorable = ~torch.isnan(group)
        k = int(scorable.sum())
        assert torch.isnan(adv[~scorable]).all()
        if k < 2:
            assert torch.isnan(adv).all()
            continue
        # Identity (Back to Basics): r_i - mean_{j != i} r_j = k/(k-1) * (r_i - mean_k r), over scorable samples.
        expected = k / (k - 1) * (group[scorable] - group[scorable].mean())
        torch.testing.assert_close(adv[scorable], expected)
    torch.testing.assert_close(
        group_mean_advantages(rewards, num_generations).view(num_prompts, num_generations),
        rewards.view(num_prompts, num_generations)
        - rewards.view(num_prompts, num_generations).nanmean(1, keepdim=True),
        equal_nan=True,
    )
