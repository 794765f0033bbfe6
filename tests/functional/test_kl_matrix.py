"""The KL matrix: every estimator (k1, k2, k3, k3_plus), with and without the importance-ratio correction in the loss.

Values and gradients are checked against their closed forms on random log-ratios; the bias of each option is computed
exactly on a small categorical policy (expectations are finite sums, no sampling noise), and a Monte-Carlo run checks
that the corrected k1/k3 gradients are unbiased within a stated tolerance. ``python tests/functional/test_kl_matrix.py``
prints the bias table of docs/kl.md.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_basics.functional import KL_ESTIMATORS, kl_estimate, kl_importance_weights, kl_k3_plus
from trl_basics.tricks.kl import KLShaping
from trl_basics.types import LossInputs, TrickContext

ESTIMATORS = ("k1", "k2", "k3", "k3_plus")

# Closed forms as functions of ℓ = log π - log π_ref: value k(ℓ) and dk/dℓ (= d/d log π at fixed π_ref).
VALUE = {
    "k1": lambda l: l,
    "k2": lambda l: 0.5 * l * l,
    "k3": lambda l: math.exp(-l) - 1 + l,
    "k3_plus": lambda l: math.exp(-l) - 1 + l,
}
SLOPE = {"k1": lambda l: 1.0, "k2": lambda l: l, "k3": lambda l: 1 - math.exp(-l), "k3_plus": lambda l: l}

log_ratios = st.lists(st.floats(-4.0, 4.0, allow_nan=False), min_size=1, max_size=12)


def _value_and_grad(name, logp, ref, old=None, correct=False):
    logp = logp.clone().requires_grad_(True)
    kl = KL_ESTIMATORS[name](logp, ref)
    if correct:
        kl = kl * kl_importance_weights(logp, old)
    kl.sum().backward()
    return kl.detach(), logp.grad


@settings(max_examples=40, deadline=None)
@given(ls=log_ratios, name=st.sampled_from(ESTIMATORS), shift=st.floats(-3.0, 3.0))
def test_value_and_gradient_match_closed_forms(ls, name, shift):
    ref = torch.full((len(ls),), shift, dtype=torch.float64)
    logp = ref + torch.tensor(ls, dtype=torch.float64)
    value, grad = _value_and_grad(name, logp, ref)
    expected_value = torch.tensor([VALUE[name](l) for l in ls], dtype=torch.float64)
    expected_grad = torch.tensor([SLOPE[name](l) for l in ls], dtype=torch.float64)
    torch.testing.assert_close(value, expected_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(ls=log_ratios, drift=st.lists(st.floats(-2.0, 2.0), min_size=12, max_size=12), name=st.sampled_from(ESTIMATORS))
def test_corrected_value_and_gradient_match_closed_forms(ls, drift, name):
    """ρ·k with ρ = exp(log π - log π_old) differentiated: value ρ k(ℓ), gradient ρ (k(ℓ) + k'(ℓ))."""
    n = len(ls)
    ref = torch.zeros(n, dtype=torch.float64)
    logp = torch.tensor(ls, dtype=torch.float64)
    old = logp - torch.tensor(drift[:n], dtype=torch.float64)
    value, grad = _value_and_grad(name, logp, ref, old, correct=True)
    rho = [math.exp(d) for d in drift[:n]]
    expected_value = torch.tensor([r * VALUE[name](l) for r, l in zip(rho, ls)], dtype=torch.float64)
    expected_grad = torch.tensor([r * (VALUE[name](l) + SLOPE[name](l)) for r, l in zip(rho, ls)], dtype=torch.float64)
    torch.testing.assert_close(value, expected_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_corrected_k3_gradient_is_rho_times_log_ratio():
    """k3 + k3' = ℓ: the corrected k3 gradient is ρ·ℓ, the importance-weighted exact reverse-KL score."""
    l = torch.tensor([-2.0, -0.3, 0.0, 0.01, 1.5], dtype=torch.float64)
    old = torch.tensor([0.4, -0.2, 0.0, 0.3, -1.0], dtype=torch.float64)
    _, grad = _value_and_grad("k3", l, torch.zeros_like(l), old, correct=True)
    torch.testing.assert_close(grad, torch.exp(l - old) * l)


def test_k3_plus_is_k3_valued_and_k2_sloped_through_kl_estimate_and_clamp():
    logp = torch.tensor([[-5.0, 0.3, 2.0]], dtype=torch.float64, requires_grad=True)
    ref = torch.zeros_like(logp)
    est = kl_estimate(logp, ref, "k3_plus", mask=torch.tensor([[1, 1, 0]]))
    assert est[0, 2] == 0.0
    torch.testing.assert_close(est[0, :2], KL_ESTIMATORS["k3"](logp, ref)[0, :2].detach())
    est.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-5.0, 0.3, 0.0]], dtype=torch.float64))
    assert kl_k3_plus(torch.tensor([0.0]), torch.tensor([0.0])).item() == 0.0


def test_importance_weights_on_policy_are_one_with_a_score_gradient():
    logp = torch.tensor([-1.0, -2.0], requires_grad=True)
    rho = kl_importance_weights(logp, None)
    assert torch.equal(rho.detach(), torch.ones(2))
    rho.sum().backward()
    assert torch.equal(logp.grad, torch.ones(2))
    masked = kl_importance_weights(torch.tensor([0.0, 50.0]), torch.tensor([0.0, -50.0]), mask=torch.tensor([1, 0]))
    assert torch.equal(masked, torch.ones(2))  # masked positions get ρ = 1, never exp(100)
    assert kl_importance_weights(torch.tensor([30.0]), torch.tensor([0.0])).item() == pytest.approx(math.exp(20.0))


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("correct", [False, True])
def test_trick_loss_is_coef_times_masked_mean_of_the_weighted_estimate(name, correct):
    torch.manual_seed(0)
    logp = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    ref, old = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.float64)
    trick = KLShaping(estimator_fn=KL_ESTIMATORS[name], estimator=name, placement="loss", coef=0.3,
                      bias_correction=correct)  # fmt: skip
    loss = trick.loss(LossInputs(logp, mask, ref_logprobs=ref, old_logprobs=old), TrickContext())
    loss.backward()
    l, rho = (
        (logp - ref).detach(),
        torch.exp(logp - old).detach() if correct else torch.ones(3, 4, dtype=torch.float64),
    )
    value = torch.tensor([[VALUE[name](x) for x in row] for row in l.tolist()], dtype=torch.float64)
    slope = torch.tensor([[SLOPE[name](x) for x in row] for row in l.tolist()], dtype=torch.float64)
    n = mask.sum()
    assert loss.item() == pytest.approx(0.3 * float((rho * value * mask).sum() / n), rel=1e-10)
    score = value if correct else torch.zeros_like(value)  # ∇ρ = ρ ∇log π adds the value as a score term
    torch.testing.assert_close(logp.grad, 0.3 * rho * (score + slope) * mask / n)


# --- the bias of each option on a small categorical policy ----------------------------------------------------------

PLACEMENTS = ("reward", "loss", "loss+correction")


def _categorical(seed: int, vocab: int = 6, drift: float = 0.5, ref_distance: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(vocab, generator=g, dtype=torch.float64)
    old = theta + drift * torch.randn(vocab, generator=g, dtype=torch.float64)
    ref = theta + ref_distance * torch.randn(vocab, generator=g, dtype=torch.float64)
    return theta, torch.log_softmax(old, 0), torch.log_softmax(ref, 0)


def _exact_kl_and_grad(theta, log_ref):
    theta = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, 0)
    kl = (logp.exp() * (logp - log_ref)).sum()
    (grad,) = torch.autograd.grad(kl, theta)
    return kl.item(), grad


def _per_token_estimator(theta, log_old, log_ref, name, placement):
    """(value_a, grad_a) for every token a, the quantity a sample of a contributes, and the sampling log-probs.

    loss: k(ℓ_θ(a)) (times ρ with the correction), differentiated in θ, sampled from π_old.
    reward: the estimate is a reward of the policy gradient, ρ·k·∇log π with ρ = 1 at the sampling policy, so it is
    evaluated on-policy (π_old = π_θ), as at the first update of a round.
    """
    vocab = theta.numel()
    values, grads = [], []
    theta_ = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta_, 0)
    sampling = logp.detach() if placement == "reward" else log_old
    for a in range(vocab):
        one = logp[a : a + 1]
        k = KL_ESTIMATORS[name](one, log_ref[a : a + 1])
        if placement == "reward":
            term = k.detach() * torch.exp(one - one.detach())  # REINFORCE with the estimate as a (negative) reward
        elif placement == "loss":
            term = k
        else:
            term = k * kl_importance_weights(one, sampling[a : a + 1])
        (g,) = torch.autograd.grad(term.sum(), theta_, retain_graph=True)
        values.append(term.item() if placement != "reward" else k.item())
        grads.append(g)
    return torch.tensor(values, dtype=torch.float64), torch.stack(grads), sampling


def bias_of(name: str, placement: str, seed: int = 0, drift: float = 0.5) -> dict[str, float]:
    theta, log_old, log_ref = _categorical(seed, drift=drift)
    kl, kl_grad = _exact_kl_and_grad(theta, log_ref)
    values, grads, sampling = _per_token_estimator(theta, log_old, log_ref, name, placement)
    weights = sampling.exp()
    mean_value = float((weights * values).sum())
    mean_grad = (weights.unsqueeze(1) * grads).sum(0)
    grad_var = float((weights * (grads - mean_grad).square().sum(1)).sum())  # trace of the per-sample covariance
    return {
        "kl": kl,
        "value_bias": mean_value - kl,
        "grad_bias": float((mean_grad - kl_grad).norm() / kl_grad.norm()),
        "grad_std": math.sqrt(grad_var) / float(kl_grad.norm()),
    }


UNBIASED_GRADIENT = {("k1", "reward"), ("k1", "loss+correction"), ("k3", "loss+correction")}
UNBIASED_VALUE = {("k1", "reward"), ("k3", "reward"), ("k3_plus", "reward"), ("k1", "loss+correction"),
                  ("k3", "loss+correction"), ("k3_plus", "loss+correction")}  # fmt: skip


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_bias_of_each_option(name, placement, seed):
    """Exact expectations under the sampling policy: unbiased options are exact to 1e-9; the others are not."""
    bias = bias_of(name, placement, seed)
    if (name, placement) in UNBIASED_GRADIENT:
        assert bias["grad_bias"] < 1e-9
    else:
        assert bias["grad_bias"] > 1e-2
    if (name, placement) in UNBIASED_VALUE:
        assert abs(bias["value_bias"]) < 1e-9
    else:
        assert abs(bias["value_bias"]) > 1e-4


def test_on_policy_k2_and_k3_plus_in_the_loss_have_the_exact_gradient_and_k3_the_forward_one():
    theta, _, log_ref = _categorical(3)
    on_policy = torch.log_softmax(theta, 0)
    _, kl_grad = _exact_kl_and_grad(theta, log_ref)
    for name in ("k2", "k3_plus"):
        _, grads, _ = _per_token_estimator(theta, on_policy, log_ref, name, "loss")
        torch.testing.assert_close((on_policy.exp().unsqueeze(1) * grads).sum(0), kl_grad)
    _, grads, _ = _per_token_estimator(theta, on_policy, log_ref, "k3", "loss")
    # E_θ[(1 - π_ref/π)∇log π] = -Σ_a π_ref(a)∇log π(a) = ∇_θ KL(π_ref ‖ π_θ), the forward KL's gradient.
    theta_ = theta.clone().requires_grad_(True)
    forward = (log_ref.exp() * (log_ref - torch.log_softmax(theta_, 0))).sum()
    (forward_grad,) = torch.autograd.grad(forward, theta_)
    torch.testing.assert_close((on_policy.exp().unsqueeze(1) * grads).sum(0), forward_grad)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), name=st.sampled_from(["k1", "k3"]))
def test_monte_carlo_corrected_gradient_is_unbiased(seed, name):
    """Sampled from π_old ≠ π_θ, the mean corrected gradient of N = 20000 tokens is within 5 standard errors of the
    exact reverse-KL gradient in every coordinate (the standard error estimated from the same samples)."""
    theta, log_old, log_ref = _categorical(seed)
    _, kl_grad = _exact_kl_and_grad(theta, log_ref)
    g = torch.Generator().manual_seed(seed + 1)
    tokens = torch.multinomial(log_old.exp(), 20_000, replacement=True, generator=g)
    theta_ = theta.clone().requires_grad_(True)
    logp = torch.log_softmax(theta_, 0)[tokens]
    kl = KL_ESTIMATORS[name](logp, log_ref[tokens]) * kl_importance_weights(logp, log_old[tokens])
    # Per-sample gradients from the exact per-token table (the loss is a mean of per-token terms).
    _, per_token_grads, _ = _per_token_estimator(theta, log_old, log_ref, name, "loss+correction")
    samples = per_token_grads[tokens]
    (grad,) = torch.autograd.grad(kl.mean(), theta_)
    torch.testing.assert_close(grad, samples.mean(0))  # the autograd mean is the mean of the per-sample gradients
    stderr = samples.std(0) / math.sqrt(len(tokens))
    assert ((grad - kl_grad).abs() <= 5 * stderr + 1e-12).all(), ((grad - kl_grad) / stderr).tolist()


def test_monte_carlo_detects_the_bias_of_uncorrected_k3_off_policy():
    """The same Monte-Carlo check fails for k3 without the correction: the test can tell biased from unbiased."""
    theta, log_old, log_ref = _categorical(0)
    _, kl_grad = _exact_kl_and_grad(theta, log_ref)
    tokens = torch.multinomial(log_old.exp(), 20_000, replacement=True, generator=torch.Generator().manual_seed(1))
    _, per_token_grads, _ = _per_token_estimator(theta, log_old, log_ref, "k3", "loss")
    samples = per_token_grads[tokens]
    stderr = samples.std(0) / math.sqrt(len(tokens))
    assert ((samples.mean(0) - kl_grad).abs() > 5 * stderr).any()


if __name__ == "__main__":
    kl = sum(bias_of("k1", "reward", s)["kl"] for s in range(3)) / 3
    print(f"KL(π_θ‖π_ref) ≈ {kl:.3f} (mean of 3 seeds); means over seeds 0-2 of |value bias|, relative gradient bias")
    print("‖E[ĝ] - ∇KL‖/‖∇KL‖ and relative per-sample gradient std √tr Cov(ĝ)/‖∇KL‖")
    cases = [(p, 0.5) for p in PLACEMENTS] + [("loss", 0.0), ("loss+correction", 0.0)]
    for placement, drift in cases:
        for name in ESTIMATORS:
            rows = [bias_of(name, placement, s, drift=drift) for s in range(3)]
            value = sum(abs(r["value_bias"]) for r in rows) / 3
            grad, std = (sum(r[key] for r in rows) / 3 for key in ("grad_bias", "grad_std"))
            where = placement if placement == "reward" else f"{placement}, {'on' if drift == 0 else 'off'}-policy"
            print(f"| `{name}` | {where} | {value:.4f} | {grad:.4f} | {std:.2f} |")
