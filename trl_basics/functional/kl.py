"""Per-token KL estimators between the policy and the reference model, and how they enter rewards or the loss.

All estimators are functions of the per-token log-ratio ℓ_t = log π(a_t) - log π_ref(a_t) of tokens sampled from π,
following Schulman 2020, "Approximating KL Divergence" (k1, k2, k3); their trade-offs are discussed in Hu 2025,
REINFORCE++ v9, App. B.1.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from ._utils import ReduceFn, accumulation_dtype, all_reduce_sum, as_bool_mask, float_dtype, work_dtype
from .stats import window_mean

__all__ = [
    "KL_ESTIMATORS",
    "clamped_kl",
    "kl_estimate",
    "kl_importance_weights",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_k3_plus",
    "kl_loss",
    "kl_sequence_penalty",
    "kl_token_penalty",
]

# Below this |ℓ| the k3 expression loses most of its digits to cancellation (exp(-ℓ) - 1 ≈ -ℓ), so use its series.
_K3_SERIES_THRESHOLD = 0.05
# Σ_{n>=2} (-ℓ)^n / n! = ℓ² · Σ_{m>=0} (-ℓ)^m / (m+2)!, truncated after m = 6 (relative error < 1e-14 at 0.05).
_K3_SERIES_COEFFS = tuple((-1.0) ** m / math.factorial(m + 2) for m in range(7))


def _k1(log_ratio: Tensor) -> Tensor:
    return log_ratio


def _k2(log_ratio: Tensor) -> Tensor:
    return 0.5 * log_ratio.square()


def _k3(log_ratio: Tensor) -> Tensor:
    small = log_ratio.abs() < _K3_SERIES_THRESHOLD
    # Feed each branch only values it handles well, so the unused branch cannot overflow into NaN gradients.
    l_small = torch.where(small, log_ratio, 0.0)
    l_large = torch.where(small, 1.0, log_ratio)
    series = torch.full_like(l_small, _K3_SERIES_COEFFS[-1])
    for coeff in reversed(_K3_SERIES_COEFFS[:-1]):  # Horner over a fixed number of coefficients, not over tokens
        series = series * l_small + coeff
    series = series * l_small.square()
    direct = torch.expm1(-l_large) + l_large
    # ℓ = -inf would give inf - inf; the limit is +inf.
    direct = torch.where(l_large == -torch.inf, torch.inf, direct)
    # exp(-ℓ) - 1 + ℓ >= 0 mathematically; the clamp guards against a last-ulp rounding below zero.
    return torch.where(small, series, direct).clamp(min=0.0)


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = ℓ = log π - log π_ref per token (Schulman 2020, Approximating KL Divergence).

    Unbiased for KL(π‖π_ref) under samples from π, but negative on individual tokens; as a loss its gradient
    ignores π_ref, so it belongs in the reward (Hu 2025, REINFORCE++ v9, App. B.1).
    """
    return _k1(logprobs - ref_logprobs)


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ½ ℓ² per token (Schulman 2020, Approximating KL Divergence).

    Biased but low-variance; as a loss its gradient is the reverse-KL gradient, hence its use as the separate KL
    loss of REINFORCE++-baseline (Hu 2025, REINFORCE++ v9, Eq. 8).
    """
    return _k2(logprobs - ref_logprobs)


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(-ℓ) - 1 + ℓ per token, always >= 0 (Schulman 2020, Approximating KL Divergence; GRPO's KL loss,
    Shao et al. 2024, DeepSeekMath, Eq. 4).

    Computed as expm1(-ℓ) + ℓ, and through its Taylor series ℓ²(1/2 - ℓ/6 + ...) for |ℓ| < 0.05, where the direct
    form cancels catastrophically; the result is clamped at 0 against rounding.
    """
    return _k3(logprobs - ref_logprobs)


def _k3_plus(log_ratio: Tensor) -> Tensor:
    k2 = _k2(log_ratio)
    return k2 + (_k3(log_ratio) - k2).detach()


def kl_k3_plus(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3+ per token: the value of k3, the gradient of k2 (straight-through, k2 + sg(k3 - k2); verl's ``"k3+"``).

    The value stays the non-negative, unbiased-on-policy k3; the gradient ℓ·∇log π is the exact reverse-KL gradient
    on-policy, which k3's own gradient (1 - π_ref/π)·∇log π is not (its expectation is the forward-KL gradient).
    """
    return _k3_plus(logprobs - ref_logprobs)


KL_ESTIMATORS: Mapping[str, Callable[[Tensor, Tensor], Tensor]] = types.MappingProxyType(
    {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3, "k3_plus": kl_k3_plus}
)


def kl_estimate(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: str = "k1",
    mask: Tensor | None = None,
    clamp: float | None = None,
    log_ratio_clamp: float | None = None,
) -> Tensor:
    """Per-token KL estimate k(ℓ_t) with ℓ_t = log π - log π_ref, by estimator name; see :func:`clamped_kl`.

    So ``kl_estimate(tensor([-5.]), tensor([0.]), "k3", clamp=10)`` is 10 (k3 = e⁵ - 6 ≈ 142.4 before the clamp),
    and with ``log_ratio_clamp=2`` instead it is k3(-2) = e² - 3 ≈ 4.389. Estimators as in :data:`KL_ESTIMATORS`
    (Schulman 2020, Approximating KL Divergence).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid names: {sorted(KL_ESTIMATORS)}")
    return clamped_kl(KL_ESTIMATORS[estimator], logprobs, ref_logprobs, mask, clamp, log_ratio_clamp)


def clamped_kl(
    estimator_fn: Callable[[Tensor, Tensor], Tensor],
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor | None = None,
    clamp: float | None = None,
    log_ratio_clamp: float | None = None,
) -> Tensor:
    """Per-token KL ``estimator_fn(log π, log π_ref)`` with two optional, independent clamps; the one implementation
    the functional API and the KL shaping trick share.

    - ``log_ratio_clamp``: ℓ_t is clamped to [-log_ratio_clamp, log_ratio_clamp] *before* the estimator, which bounds
      k3's exponential (verl's k3 uses 20): the estimator sees log π_ref + clamp(ℓ_t) where ℓ_t is out of range;
    - ``clamp``: the estimate itself is clamped to [-clamp, clamp] *after* the estimator (OpenRLHF clamps every
      estimator's output to ±10; verl clamps k3's output to ±10).

    Masked positions are exactly 0 and never influence active ones: both log-probs are zeroed there before any
    nonlinearity, so garbage (inf, NaN) cannot overflow the estimator.
    """
    for name, bound in (("clamp", clamp), ("log_ratio_clamp", log_ratio_clamp)):
        if bound is not None and not bound > 0:
            raise ValueError(f"KL estimate: {name} must be positive or None, got {bound}")
    active = as_bool_mask(mask, logprobs)
    logprobs = torch.where(active, logprobs, 0.0)
    ref_logprobs = torch.where(active, ref_logprobs, 0.0)
    if log_ratio_clamp is not None:
        log_ratio = logprobs - ref_logprobs
        out_of_range = log_ratio.abs() > log_ratio_clamp
        clamped = ref_logprobs + log_ratio.clamp(min=-log_ratio_clamp, max=log_ratio_clamp)
        logprobs = torch.where(out_of_range, clamped, logprobs)
    estimate = estimator_fn(logprobs, ref_logprobs)
    if clamp is not None:
        estimate = estimate.clamp(min=-clamp, max=clamp)
    return torch.where(active, estimate, 0.0)


def kl_token_penalty(kl: Tensor, mask: Tensor, coef: float) -> Tensor:
    """Per-token KL reward shaping -β·KL_t at active tokens, 0 elsewhere (Hu 2025, REINFORCE++ v1, Eqs. 4-5).

    Added to the token rewards, whose outcome reward sits at the last token (see ``outcome_token_rewards``).
    """
    return torch.where(as_bool_mask(mask, kl), -coef * kl, 0.0)


def kl_sequence_penalty(kl: Tensor, mask: Tensor, coef: float) -> Tensor:
    """Sequence-level KL penalty -β·Σ_t KL_t per completion, shape (B,) (Ahmadian et al. 2024, Back to Basics, Eq. 3).

    The whole completion is one bandit action, so R(x, y) = r(x, y) - β·Σ_t log π/π_ref; TRL's RLOOTrainer adds this
    to the reward before the leave-one-out baseline.
    """
    return -coef * torch.where(as_bool_mask(mask, kl), kl, 0.0).sum(dim=-1)


def kl_loss(
    kl: Tensor,
    mask: Tensor,
    coef: float,
    reduce_fn: ReduceFn | None = None,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """KL loss β · Σ_{active t} KL_t / N, a token mean of the per-token KL (Hu 2025, REINFORCE++ v9, Eq. 8; GRPO,
    Shao et al. 2024, DeepSeekMath, Eq. 3). The numerator is always this process's (micro-batch's) sum; N is:

    - ``normalizer`` when given: this micro-batch's share of a larger batch's token count, e.g. the active tokens of
      the whole gradient accumulation window on every process divided by the number of processes
      (:func:`~trl_basics.functional.stats.window_mean`), so the window's terms add up to its token mean however it
      is split into micro-batches;
    - else, with ``reduce_fn``, the active-token count summed over processes (one collective): summing the returned
      losses of all processes gives the global token mean, and an empty local batch contributes 0 instead of NaN
      (DDP averages gradients over processes, so the trainer multiplies by the number of processes to obtain the
      gradient of the global mean);
    - else the micro-batch's own token count.

    N is clamped to at least 1.
    """
    if normalizer is not None or reduce_fn is None:
        return coef * window_mean(kl, mask, normalizer)
    active = as_bool_mask(mask, kl)
    wd = work_dtype(kl)
    local_sum = torch.where(active, kl.to(wd), 0.0).sum()
    global_count = all_reduce_sum(active.sum().to(accumulation_dtype(kl.device)).reshape(1), reduce_fn)[0]
    return (coef * local_sum / global_count.clamp(min=1.0).to(wd)).to(float_dtype(kl))


def kl_importance_weights(
    logprobs: Tensor, old_logprobs: Tensor | None, mask: Tensor | None = None, log_ratio_clamp: float | None = 20.0
) -> Tensor:
    """Per-token importance ratio ρ_t = π_θ(a_t)/π_old(a_t), differentiable in ``logprobs``, for the KL in the loss.

    Multiplying a per-token KL estimate by ρ_t turns the expectation under the sampling policy π_old into one under
    π_θ (DeepSeek-V3.2, arXiv 2512.02556, Eq. 8; TRL GRPO's ``use_bias_correction_kl``). Because ρ_t is differentiated
    too, the gradient gains a score term: ∇(ρ k) = ρ (k ∇log π_θ + ∇k). For k1 and k3 this makes the gradient the
    exact reverse-KL gradient E_θ[ℓ ∇log π_θ]; for k2 and k3+ it adds a bias (see docs/kl.md).

    ``old_logprobs=None`` means on-policy: ρ_t = exp(log π_θ - sg(log π_θ)), value 1 with gradient ρ_t ∇log π_θ.
    The log-ratio is clamped to ±``log_ratio_clamp`` against overflow; masked positions get ρ = 1.
    """
    if log_ratio_clamp is not None and not log_ratio_clamp > 0:
        raise ValueError(f"kl_importance_weights: log_ratio_clamp must be positive or None, got {log_ratio_clamp}")
    old = logprobs.detach() if old_logprobs is None else old_logprobs.detach()
    active = as_bool_mask(mask, logprobs)
    log_ratio = torch.where(active, logprobs - old, 0.0)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    return torch.exp(log_ratio)
