"""Tests for trl_basics.functional.stats."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import GARBAGE, append_garbage, fill_masked, random_batch, run_in_lockstep, split_rows
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trl_basics.functional import (
    MovingAverageBaseline,
    RunningMoments,
    explained_variance,
    masked_mean,
    masked_moments,
    masked_sum,
    masked_whiten,
    window_mean,
)

NAN = float("nan")
FAST = settings(max_examples=50, deadline=None)


def test_masked_sum_and_mean() -> None:
    x = torch.tensor([[1.0, 2.0, NAN], [3.0, float("inf"), 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_sum(x, mask).item() == 11.0
    assert masked_sum(x, mask, dim=-1).tolist() == [3.0, 8.0]
    assert masked_mean(x, mask).item() == pytest.approx(11 / 4)
    assert masked_mean(x, mask, dim=-1).tolist() == [1.5, 4.0]
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError, match="reduce_fn"):
        masked_mean(x, mask, dim=-1, reduce_fn=lambda t: t)


def test_masked_moments_skip_nan_like_trl_nanstd() -> None:
    mean, var, count = masked_moments(torch.tensor([1.0, 2.0, 3.0, NAN]), unbiased=True)
    assert (mean.item(), var.item(), count.item()) == (2.0, 1.0, 3)
    _, population_var, _ = masked_moments(torch.tensor([1.0, 2.0, 3.0, NAN]))
    assert population_var.item() == pytest.approx(2 / 3)
    empty_mean, empty_var, empty_count = masked_moments(torch.ones(3), torch.zeros(3))
    assert (empty_mean.item(), empty_var.item(), empty_count.item()) == (0.0, 0.0, 0)


def test_masked_whiten_variants() -> None:
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, NAN, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # active values [1, 3, 5]: mean 3, population var 8/3
    scale = 1 / math.sqrt(8 / 3)
    whitened = masked_whiten(x, mask, eps=0.0).flatten().tolist()
    assert whitened == pytest.approx([-2 * scale, 0.0, 0.0, 2 * scale, 0.0, 0.0])
    scaled_only = masked_whiten(x, mask, center=False, eps=0.0).flatten().tolist()
    assert scaled_only == pytest.approx([scale, 3 * scale, 0.0, 5 * scale, 0.0, 0.0])
    assert masked_whiten(x, mask, scale=False).tolist() == [[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]
    # A NaN at an active position is left out of the statistics and stays NaN.
    out = masked_whiten(torch.tensor([1.0, NAN, 3.0]), eps=0.0)
    assert out[0].item() == pytest.approx(-1.0) and math.isnan(out[1].item()) and out[2].item() == pytest.approx(1.0)


def test_masked_whiten_keeps_dtype_and_single_element_is_finite() -> None:
    assert masked_whiten(torch.randn(4, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert masked_whiten(torch.tensor([2.0]), unbiased=True).tolist() == [0.0]


def test_explained_variance() -> None:
    returns = torch.tensor([[1.0, 2.0, 3.0, 42.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)
    # residual [1, 0, -1] - its mean 0 -> var 2/3; var R = 2/3 -> 1 - 1 = 0; shift residual pattern:
    values = torch.tensor([[1.0, 2.0, 2.0, 0.0]])  # residual [0, 0, 1]: var 2/9
    assert explained_variance(values, returns, mask).item() == pytest.approx(1 - (2 / 9) / (2 / 3))
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


# ----------------------------------------------------------------------------------------------------------------
# Running moments and the moving-average baseline


def test_running_moments_anchor() -> None:
    running = RunningMoments()
    assert (running.mean, running.var, running.count) == (0.0, 1.0, 0.0)
    batch_mean, batch_std = running.update(torch.tensor([1.0, 2.0]))
    assert batch_mean.item() == 1.5 and batch_std.item() == pytest.approx(math.sqrt(0.5))
    running.update(torch.tensor([3.0, 4.0, 5.0]))
    assert running.mean == pytest.approx(3.0)
    assert running.var == pytest.approx(2.5)
    assert running.std == pytest.approx(1.58114, abs=1e-5)
    assert running.count == 5.0
    # population variance 2 = M2 / n
    assert running.state_dict()["m2"] / running.count == pytest.approx(2.0)


def test_running_moments_state_dict_round_trip() -> None:
    running = RunningMoments()
    running.update(torch.tensor([1.0, 2.0, NAN, 7.0]))
    state = running.state_dict()
    assert all(type(v) is float for v in state.values())
    restored = RunningMoments()
    restored.load_state_dict(state)
    running.update(torch.tensor([0.5, -3.0]))
    restored.update(torch.tensor([0.5, -3.0]))
    assert restored.state_dict() == running.state_dict()
    with pytest.raises(KeyError):
        RunningMoments().load_state_dict({"mean": 0.0})


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    sizes=st.lists(st.integers(0, 7), min_size=1, max_size=6),
    shift=st.sampled_from([0.0, 100.0]),
)
def test_running_moments_equal_moments_of_concatenation(seed: int, sizes: list[int], shift: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    running = RunningMoments()
    kept = []
    for size in sizes:
        chunk = torch.randn(size, generator=gen, dtype=torch.float64) * 3 + shift
        chunk[torch.rand(size, generator=gen) < 0.2] = NAN
        mask = torch.rand(size, generator=gen) < 0.8
        running.update(chunk, mask)
        kept.append(chunk[mask & ~torch.isnan(chunk)])
    everything = torch.cat(kept)
    assert running.count == everything.numel()
    if everything.numel() >= 1:
        assert running.mean == pytest.approx(everything.mean().item(), rel=1e-9, abs=1e-9)
    if everything.numel() >= 2:
        assert running.var == pytest.approx(everything.var().item(), rel=1e-7, abs=1e-9)


@FAST
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 8), cuts=st.lists(st.integers(0, 8), max_size=2))
def test_running_moments_identical_on_every_process(seed: int, batch: int, cuts: list[int]) -> None:
    x, mask, _ = random_batch(seed, batch, 3)
    shards = split_rows([min(c, batch) for c in cuts], x, mask)

    def process(shard, reduce_fn):
        running = RunningMoments()
        batch_stats = running.update(shard[0], shard[1], reduce_fn=reduce_fn)
        running.update(shard[0] * 2 + 1, shard[1], reduce_fn=reduce_fn)
        return running.state_dict(), batch_stats

    results = run_in_lockstep(process, shards)
    single = RunningMoments()
    single_stats = single.update(x, mask)
    single.update(x * 2 + 1, mask)
    for state, (batch_mean, batch_std) in results:
        assert state == results[0][0]
        assert state == pytest.approx(single.state_dict(), rel=1e-12, abs=1e-12)
        torch.testing.assert_close(torch.stack([batch_mean, batch_std]), torch.stack(single_stats))


def test_moving_average_baseline_cumulative_mean() -> None:
    baseline = MovingAverageBaseline()
    first = torch.tensor([1.0, 2.0, 3.0, NAN])
    assert baseline.value is None
    assert baseline.baseline_for(first).item() == 2.0  # no value yet: the batch mean
    baseline.update(first)
    assert baseline.value == 2.0
    assert baseline.baseline_for(torch.tensor([5.0])).item() == 2.0  # computed before updating
    baseline.update(torch.tensor([5.0]))
    assert baseline.value == pytest.approx((1 + 2 + 3 + 5) / 4)
    baseline.update(torch.tensor([NAN]))  # nothing scorable: unchanged
    assert baseline.value == pytest.approx(2.75)


def test_moving_average_baseline_ema_and_state() -> None:
    baseline = MovingAverageBaseline(decay=0.9)
    baseline.update(torch.tensor([1.0, 3.0]))
    assert baseline.value == 2.0
    baseline.update(torch.tensor([5.0]))
    assert baseline.value == pytest.approx(0.9 * 2.0 + 0.1 * 5.0)
    restored = MovingAverageBaseline(decay=0.9)
    restored.load_state_dict(baseline.state_dict())
    assert restored.value == baseline.value
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="decay"):
            MovingAverageBaseline(decay=decay)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1), size=st.integers(1, 9), cut=st.integers(0, 9), decay=st.sampled_from([None, 0.5])
)
def test_moving_average_baseline_across_processes(seed: int, size: int, cut: int, decay: float | None) -> None:
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randn(size, generator=gen, dtype=torch.float64) for _ in range(3)]
    cut = min(cut, size)

    def process(rank_slice, reduce_fn):
        baseline = MovingAverageBaseline(decay)
        used = []
        for rewards in batches:
            local = rewards[rank_slice]
            used.append(baseline.baseline_for(local, reduce_fn).item())
            baseline.update(local, reduce_fn)
        return used, baseline.value

    results = run_in_lockstep(process, [slice(0, cut), slice(cut, size)])
    single = process(slice(0, size), None)
    for used, value in results:
        assert used == pytest.approx(single[0], rel=1e-12) and value == pytest.approx(single[1], rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Whitening properties


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    length=st.integers(1, 8),
    unbiased=st.booleans(),
    prefix=st.booleans(),
    shift=st.sampled_from([0.0, -7.0, 1e3]),
)
def test_whitening_gives_zero_mean_unit_variance(
    seed: int, batch: int, length: int, unbiased: bool, prefix: bool, shift: float
) -> None:
    x, mask, _ = random_batch(seed, batch, length, prefix_mask=prefix)
    x = x + shift
    values = x[mask]
    assume(values.numel() >= 2 and values.var().item() > 1e-3)
    out = masked_whiten(x, mask, unbiased=unbiased)
    active = out[mask]
    assert active.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert active.var(correction=int(unbiased)).item() == pytest.approx(1.0, rel=1e-5)
    assert (out[~mask] == 0).all()


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 5),
    length=st.integers(1, 8),
    pad=st.integers(1, 4),
    garbage=st.sampled_from(GARBAGE),
    center=st.booleans(),
    scale=st.booleans(),
)
def test_whitening_ignores_masked_garbage(
    seed: int, batch: int, length: int, pad: int, garbage: float, center: bool, scale: bool
) -> None:
    x, mask, _ = random_batch(seed, batch, length, prefix_mask=False)
    clean = masked_whiten(x, mask, center=center, scale=scale)
    dirty_x, dirty_mask = append_garbage(fill_masked(x, mask, garbage), mask, pad, garbage)
    dirty = masked_whiten(dirty_x, dirty_mask, center=center, scale=scale)
    torch.testing.assert_close(dirty[:, :length], clean, rtol=1e-12, atol=1e-12)
    assert (dirty[~dirty_mask] == 0).all()


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 8),
    length=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 8), min_size=1, max_size=2),
    unbiased=st.booleans(),
)
def test_distributed_whitening_matches_single_process(
    seed: int, batch: int, length: int, cuts: list[int], unbiased: bool
) -> None:
    x, mask, gen = random_batch(seed, batch, length)
    shards = split_rows([min(c, batch) for c in cuts], x, mask)
    outputs = run_in_lockstep(
        lambda s, reduce_fn: masked_whiten(s[0], s[1], unbiased=unbiased, reduce_fn=reduce_fn), shards
    )
    torch.testing.assert_close(torch.cat(outputs), masked_whiten(x, mask, unbiased=unbiased))

    moments = run_in_lockstep(lambda s, reduce_fn: masked_moments(s[0], s[1], reduce_fn=reduce_fn), shards)
    for mean, var, count in moments:
        torch.testing.assert_close((mean, var, count), masked_moments(x, mask))

    means = run_in_lockstep(lambda s, reduce_fn: masked_mean(s[0], s[1], reduce_fn=reduce_fn), shards)
    for mean in means:
        torch.testing.assert_close(mean, masked_mean(x, mask))

    values = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    ev_shards = split_rows([min(c, batch) for c in cuts], values, x, mask)
    evs = run_in_lockstep(lambda s, reduce_fn: explained_variance(*s, reduce_fn=reduce_fn), ev_shards)
    for ev in evs:
        torch.testing.assert_close(ev, explained_variance(values, x, mask), equal_nan=True)


def test_window_mean_exact_values() -> None:
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 1e30]])  # masked garbage never counts
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # (1 + 2 + 4) over the window's 10 tokens, or over the micro-batch's own 3 without a normaliser.
    assert window_mean(x, mask, torch.tensor(10.0)).item() == pytest.approx(0.7)
    assert window_mean(x, mask, 10).item() == pytest.approx(0.7)
    assert window_mean(x, mask).item() == pytest.approx(7.0 / 3.0)
    # A normaliser below 1 (an empty window) is clamped, so nothing becomes inf or NaN.
    assert window_mean(x, torch.zeros_like(mask), torch.tensor(0.0)).item() == 0.0


@FAST
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(2, 8), length=st.integers(1, 7), cut=st.integers(1, 7))
def test_window_means_of_micro_batches_add_up_to_the_window_mean(seed: int, batch: int, length: int, cut: int) -> None:
    x, mask, _ = random_batch(seed, batch, length)
    cut = min(cut, batch - 1)
    window_tokens = mask.sum()
    parts = [window_mean(x[rows], mask[rows], window_tokens) for rows in (slice(0, cut), slice(cut, None))]
    torch.testing.assert_close(sum(parts), masked_mean(x, mask))
