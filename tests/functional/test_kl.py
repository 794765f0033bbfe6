"""Tests for trl_basics.functional.kl."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import GARBAGE, append_garbage, fill_masked, random_batch, run_in_lockstep, split_rows
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_basics.functional import (
    KL_ESTIMATORS,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss,
    kl_sequence_penalty,
    kl_token_penalty,
)

LN2 = math.log(2.0)
FAST = settings(max_examples=50, deadline=None)


def _pair(log_ratio: list[float], dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs, ref_logprobs) with the given log-ratio, using a non-zero reference to exercise the subtraction."""
    ref = torch.full((len(log_ratio),), -1.5, dtype=dtype)
    return ref + torch.tensor(log_ratio, dtype=dtype), ref


# ----------------------------------------------------------------------------------------------------------------
# Hand-checked anchors (algorithms.md §9)


def test_anchor_ln2() -> None:
    logp, ref = _pair([LN2])
    assert kl_k1(logp, ref).item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_k2(logp, ref).item() == pytest.approx(0.240227, abs=1e-6)
    assert kl_k3(logp, ref).item() == pytest.approx(0.193147, abs=1e-6)


def test_anchor_minus_ln2_and_small() -> None:
    logp, ref = _pair([-LN2, 0.1])
    k3 = kl_k3(logp, ref)
    assert k3[0].item() == pytest.approx(0.306853, abs=1e-6)
    assert k3[1].item() == pytest.approx(0.0048374, abs=1e-7)


@pytest.mark.parametrize("name", ["k1", "k2", "k3", "k3_plus"])
def test_kl_estimate_matches_estimators(name: str) -> None:
    logp, ref = _pair([LN2, -LN2, 0.1, 0.0, -3.0])
    torch.testing.assert_close(kl_estimate(logp, ref, name), KL_ESTIMATORS[name](logp, ref))


def test_estimator_registry_is_read_only() -> None:
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3", "k3_plus"}
    with pytest.raises(TypeError):
        KL_ESTIMATORS["k4"] = kl_k1  # type: ignore[index]


def test_unknown_estimator_lists_valid_names() -> None:
    logp, ref = _pair([0.1])
    with pytest.raises(ValueError, match=r"k1.*k2.*k3"):
        kl_estimate(logp, ref, "k5")


def test_clamp_bounds_the_estimate_and_log_ratio_clamp_bounds_the_input() -> None:
    logp, ref = _pair([50.0, -50.0, -5.0])
    # `clamp` acts on the estimator's output (OpenRLHF: ±10 for every estimator).
    assert kl_estimate(logp, ref, "k1", clamp=10.0).tolist() == pytest.approx([10.0, -10.0, -5.0])
    assert kl_estimate(logp, ref, "k3", clamp=10.0).tolist() == pytest.approx([10.0, 10.0, 10.0])
    assert kl_estimate(logp, ref, "k2", clamp=10.0).tolist() == pytest.approx([10.0, 10.0, 10.0])
    # `log_ratio_clamp` acts on ℓ before the estimator.
    k3 = kl_estimate(logp, ref, "k3", log_ratio_clamp=10.0)
    assert k3.tolist() == pytest.approx([9.0 + math.exp(-10.0), math.exp(10.0) - 11.0, math.exp(5.0) - 6.0], rel=1e-12)
    # Both (verl's k3: input ±20, output ±10): ℓ = -5 gives exp(5) - 6 = 142.4 before the output clamp.
    both = kl_estimate(logp, ref, "k3", clamp=10.0, log_ratio_clamp=20.0)
    assert both.tolist() == pytest.approx([10.0, 10.0, 10.0])
    for name in ("clamp", "log_ratio_clamp"):
        with pytest.raises(ValueError, match=f"{name} must be positive"):
            kl_estimate(logp, ref, "k1", **{name: 0.0})


def test_masked_positions_are_zero_even_for_garbage() -> None:
    logp = torch.tensor([[0.3, float("nan"), float("inf")]])
    ref = torch.tensor([[0.1, 0.0, -float("inf")]])
    mask = torch.tensor([[1, 0, 0]])
    for name in KL_ESTIMATORS:
        out = kl_estimate(logp, ref, name, mask=mask)
        assert out[0, 1:].tolist() == [0.0, 0.0]
        assert torch.isfinite(out).all()


def test_k3_small_log_ratio_is_accurate_in_float32() -> None:
    # The naive exp(-l) - 1 + l loses almost every digit here; the series branch must not.
    values = [1e-7, -1e-6, 1e-4, -1e-3, 0.01, 0.0499, -0.0501, 0.2, -0.7, 3.0]
    got = kl_k3(torch.tensor(values, dtype=torch.float32), torch.zeros(len(values), dtype=torch.float32))
    for value, k3 in zip(values, got.tolist(), strict=True):
        exact = math.expm1(-value) + value if abs(value) > 1e-3 else value**2 / 2 - value**3 / 6 + value**4 / 24
        assert k3 == pytest.approx(exact, rel=2e-6), value


def test_k3_gradient_is_finite_with_masked_overflow() -> None:
    logp = torch.tensor([[0.2, -0.01, 1e4]], requires_grad=True)
    ref = torch.tensor([[0.0, 0.0, -1e4]])
    mask = torch.tensor([[True, True, False]])
    kl_estimate(logp, ref, "k3", mask=mask).sum().backward()
    assert torch.isfinite(logp.grad).all()
    expected = [1.0 - math.exp(-0.2), 1.0 - math.exp(0.01), 0.0]  # d k3 / d l = 1 - exp(-l)
    assert logp.grad[0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_token_and_sequence_penalties() -> None:
    kl = torch.tensor([[0.1, 0.2, 0.3, float("nan")]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert kl_token_penalty(kl, mask, 0.5)[0].tolist() == pytest.approx([-0.05, -0.1, -0.15, 0.0])
    assert kl_sequence_penalty(kl, mask, 0.5).tolist() == pytest.approx([-0.3])


def test_kl_loss_is_the_global_token_mean() -> None:
    kl = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert kl_loss(kl, mask, 0.1).item() == pytest.approx(0.1 * 2.0)
    assert kl_loss(kl, torch.zeros_like(mask), 0.1).item() == 0.0
    # Over a window of 6 tokens of which this micro-batch holds 3: β · (1 + 2 + 3) / 6.
    assert kl_loss(kl, mask, 0.1, normalizer=torch.tensor(6.0)).item() == pytest.approx(0.1)


@FAST
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 6), length=st.integers(1, 7), cut=st.integers(0, 6))
def test_kl_loss_sums_to_global_mean_across_processes(seed: int, batch: int, length: int, cut: int) -> None:
    kl, mask, _ = random_batch(seed, batch, length)
    shards = split_rows([min(cut, batch)], kl, mask)
    losses = run_in_lockstep(lambda s, reduce_fn: kl_loss(s[0], s[1], 0.3, reduce_fn=reduce_fn), shards)
    torch.testing.assert_close(sum(losses), kl_loss(kl, mask, 0.3))


# ----------------------------------------------------------------------------------------------------------------
# Properties

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


@FAST
@given(logp=st.lists(finite32, min_size=1, max_size=8), ref=st.lists(finite32, min_size=8, max_size=8))
def test_k3_is_non_negative_for_any_finite_input(logp: list[float], ref: list[float]) -> None:
    logp_t = torch.tensor(logp, dtype=torch.float32)
    ref_t = torch.tensor(ref[: len(logp)], dtype=torch.float32)
    assert (kl_k3(logp_t, ref_t) >= 0).all()
    assert (kl_estimate(logp_t, ref_t, "k3", log_ratio_clamp=20.0) >= 0).all()
    assert (kl_estimate(logp_t, ref_t, "k3", clamp=10.0) >= 0).all()


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 4),
    length=st.integers(1, 6),
    pad=st.integers(1, 4),
    garbage=st.sampled_from(GARBAGE),
    name=st.sampled_from(["k1", "k2", "k3"]),
    clamp=st.sampled_from([None, 1.0, 10.0]),
    prefix=st.booleans(),
)
def test_kl_estimate_ignores_masked_garbage(
    seed: int, batch: int, length: int, pad: int, garbage: float, name: str, clamp: float | None, prefix: bool
) -> None:
    logp, mask, gen = random_batch(seed, batch, length, prefix_mask=prefix)
    ref = torch.randn(batch, length, generator=gen, dtype=torch.float64)
    clean = kl_estimate(logp, ref, name, mask=mask, clamp=clamp, log_ratio_clamp=clamp)
    dirty_logp, dirty_mask = append_garbage(fill_masked(logp, mask, garbage), mask, pad, garbage)
    dirty_ref, _ = append_garbage(fill_masked(ref, mask, -garbage), mask, pad, garbage)
    dirty = kl_estimate(dirty_logp, dirty_ref, name, mask=dirty_mask, clamp=clamp, log_ratio_clamp=clamp)
    assert torch.equal(dirty[:, :length], clean)
    assert (dirty[:, length:] == 0).all() and (dirty[~dirty_mask] == 0).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_categories=st.integers(2, 6), name=st.sampled_from(["k1", "k3"]))
def test_k1_and_k3_sample_means_approach_the_true_kl(seed: int, num_categories: int, name: str) -> None:
    gen = torch.Generator().manual_seed(seed)
    log_p = torch.log_softmax(torch.randn(num_categories, generator=gen, dtype=torch.float64), dim=0)
    log_q = torch.log_softmax(torch.randn(num_categories, generator=gen, dtype=torch.float64), dim=0)
    true_kl = (log_p.exp() * (log_p - log_q)).sum()
    samples = torch.multinomial(log_p.exp(), 20_000, replacement=True, generator=gen)
    estimates = KL_ESTIMATORS[name](log_p[samples], log_q[samples])
    standard_error = estimates.std() / math.sqrt(samples.numel())
    assert abs(estimates.mean() - true_kl) <= 5 * standard_error + 1e-9
