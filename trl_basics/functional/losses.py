"""Policy and value losses: token-level PPO clip (with optional dual clip), sequence-level clip, clipped value loss.

The policy losses return per-token (or per-sequence) losses so the trainer chooses the aggregation (token mean,
sequence mean, global normalisation); the value loss aggregates itself, over the global active-token count.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import ReduceFn, accumulation_dtype, all_reduce_sum, as_bool_mask, work_dtype

__all__ = ["clipped_policy_loss", "clipped_value_loss", "sequence_clipped_policy_loss"]


def _check_clip_args(epsilon_low: float, epsilon_high: float | None, log_ratio_clamp: float | None) -> float:
    if not 0.0 <= epsilon_low < 1.0:
        raise ValueError(f"epsilon_low must be in [0, 1), got {epsilon_low}")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    if not epsilon_high >= 0.0:
        raise ValueError(f"epsilon_high must be >= 0, got {epsilon_high}")
    if log_ratio_clamp is not None and not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be positive or None, got {log_ratio_clamp}")
    return epsilon_high


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, epsilon_low: float, epsilon_high: float
) -> tuple[Tensor, Tensor]:
    """max(-A ρ, -A clip(ρ, 1-ε_low, 1+ε_high)) and where the clip bounds the objective."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    loss = torch.maximum(unclipped, clipped)
    # The clipped branch wins (and the gradient vanishes) exactly in these two regions.
    is_clipped = ((ratio < 1.0 - epsilon_low) & (advantages < 0)) | ((ratio > 1.0 + epsilon_high) & (advantages > 0))
    return loss, is_clipped


def _dual_clip(loss: Tensor, is_clipped: Tensor, adv: Tensor, dual_clip: float) -> tuple[Tensor, Tensor]:
    """min(loss, -c·A) where A < 0 (Ye et al. 2020); the bound is constant in θ, so the gradient vanishes there."""
    if not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    dual_bound = -dual_clip * adv
    dual_binds = (adv < 0) & (loss > dual_bound)
    return torch.where(dual_binds, dual_bound, loss), is_clipped | dual_binds


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = 20.0,
) -> tuple[Tensor, Tensor]:
    """Token-level PPO clipped surrogate (Schulman et al. 2017, PPO, Eq. 7; used by REINFORCE++, Hu 2025, v9 Eq. 1).

    ρ_t = exp(log π_θ - log π_old), with the log-ratio clamped to ±``log_ratio_clamp`` against overflow;
    loss_t = max(-A_t ρ_t, -A_t clip(ρ_t, 1 - ε_low, 1 + ε_high)), ε_high defaulting to ε_low (asymmetric clipping
    à la DAPO when they differ). Dual clip (Ye et al. 2020, Mastering Complex Control in MOBA Games with Deep RL):
    for A_t < 0, loss_t = min(loss_t, -c·A_t) with c > 1, bounding the loss when ρ_t explodes.

    Args:
        advantages: (B,) broadcast over tokens, or (B, T).
        mask: (B, T) 0/1 mask.

    Returns:
        (per_token_loss, clipped): the (B, T) loss, 0 at masked positions, and a (B, T) bool tensor marking active
        tokens whose gradient is cut by clipping (the ε clip, or the dual clip when it binds).
    """
    epsilon_high = _check_clip_args(epsilon_low, epsilon_high, log_ratio_clamp)
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    active = as_bool_mask(mask, logprobs)
    if advantages.dim() == logprobs.dim() - 1:
        advantages = advantages.unsqueeze(-1)
    elif advantages.shape != logprobs.shape:
        raise ValueError(
            f"advantages must be (B,) or (B, T) matching logprobs {tuple(logprobs.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    wd = work_dtype(logprobs)
    # Zero masked log-ratios and advantages first, so garbage there can neither overflow exp() nor produce NaN.
    log_ratio = torch.where(active, logprobs.to(wd) - old_logprobs.to(wd), 0.0)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    adv = torch.where(active, advantages.to(wd), 0.0)
    loss, is_clipped = _clipped_surrogate(torch.exp(log_ratio), adv, epsilon_low, epsilon_high)
    if dual_clip is not None:
        loss, is_clipped = _dual_clip(loss, is_clipped, adv, dual_clip)
    loss = torch.where(active, loss, 0.0).to(logprobs.dtype)
    return loss, is_clipped & active


def sequence_clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    log_ratio_clamp: float | None = 20.0,
    dual_clip: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Sequence-level PPO clip, one action per completion (Ahmadian et al. 2024, Back to Basics, §2.3; TRL 1.16
    RLOOTrainer): ρ = exp(Σ_t mask_t (log π_θ - log π_old)),
    loss = max(-A ρ, -A clip(ρ, 1 - ε_low, 1 + ε_high)).

    The summed log-ratio is clamped to ±``log_ratio_clamp`` (TRL does not clamp; None reproduces it exactly).
    ``dual_clip`` = c > 1 bounds the loss of a negative-advantage sequence by -c·A, as in ``clipped_policy_loss``.

    Args:
        logprobs, old_logprobs: (B, T) per-token log-probabilities.
        advantages: (B,) sequence advantages.
        mask: (B, T) 0/1 mask.

    Returns:
        (per_sequence_loss, clipped), both (B,).
    """
    epsilon_high = _check_clip_args(epsilon_low, epsilon_high, log_ratio_clamp)
    active = as_bool_mask(mask, logprobs)
    wd = work_dtype(logprobs)
    log_ratio = torch.where(active, logprobs.to(wd) - old_logprobs.to(wd), 0.0).sum(dim=-1)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    adv = advantages.to(wd)
    loss, is_clipped = _clipped_surrogate(torch.exp(log_ratio), adv, epsilon_low, epsilon_high)
    if dual_clip is not None:
        loss, is_clipped = _dual_clip(loss, is_clipped, adv, dual_clip)
    return loss.to(logprobs.dtype), is_clipped


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float | None = 0.2,
    reduce_fn: ReduceFn | None = None,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss ½ · max((V - R)², (V_clip - R)²), V_clip = V_old + clip(V - V_old, -ε_v, ε_v)
    (Zheng et al. 2023, Secrets of RLHF Part I, value-loss clipping; ``clip_range=None`` gives plain ½(V - R)²).

    The loss is Σ_{local active t} loss_t / N_global, N_global the active-token count summed over processes with
    ``reduce_fn`` (like ``kl_loss``: summing the per-process losses gives the global token mean).

    Returns:
        (loss, clip_fraction): scalar loss, and the GLOBAL fraction of active tokens where the clipped term is
        strictly larger (0 when ``clip_range`` is None). Both come from one collective.
    """
    if clip_range is not None and not clip_range > 0:
        raise ValueError(f"clip_range must be positive or None, got {clip_range}")
    active = as_bool_mask(mask, values)
    wd = work_dtype(values)
    v = torch.where(active, values.to(wd), 0.0)
    r = torch.where(active, returns.to(wd), 0.0)
    loss_t = (v - r).square()
    if clip_range is None:
        is_clipped = torch.zeros_like(active)
    else:
        v_old = torch.where(active, old_values.to(wd), 0.0)
        v_clipped = v_old + (v - v_old).clamp(-clip_range, clip_range)
        loss_clipped_t = (v_clipped - r).square()
        is_clipped = active & (loss_clipped_t > loss_t)
        loss_t = torch.maximum(loss_t, loss_clipped_t)
    local_sum = 0.5 * torch.where(active, loss_t, 0.0).sum()
    acc = accumulation_dtype(values.device)
    packed = torch.stack([active.sum().to(acc), is_clipped.sum().to(acc)])
    count, clipped_count = all_reduce_sum(packed, reduce_fn).unbind()
    count = count.clamp(min=1.0)
    loss = local_sum / count.to(wd)
    return loss.to(values.dtype), (clipped_count / count).to(values.dtype)
