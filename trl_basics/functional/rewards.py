"""Outcome-reward placement and reward post-processing (clipping, scaling, normalisation).

NaN marks an unscorable sample (TRL 1.16 convention) and is propagated unchanged by every transform here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import as_bool_mask, float_dtype

__all__ = ["clip_rewards", "last_token_index", "normalize_rewards", "outcome_token_rewards", "scale_rewards"]


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last active token of each row, t* = max{t : mask_t = 1}, or -1 for a row with no active token.

    Works for right padding, left padding and interior holes alike. Returns a (B,) int64 tensor.
    """
    active = as_bool_mask(mask, mask)
    positions = torch.arange(active.shape[-1], device=active.device)
    return torch.where(active, positions, -1).amax(dim=-1)


def outcome_token_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place the scalar outcome reward of each completion on its last active token: r_t = 1[t = t*] · r
    (Hu 2025, REINFORCE++ v1, Eq. 4; the EOS-token reward of Zheng et al. 2023, Secrets of RLHF Part I).

    Args:
        rewards: (B,) outcome rewards.
        mask: (B, T) 0/1 completion mask.

    Returns:
        (B, T) token rewards, zero everywhere except the last active token; rows without active tokens are all 0.
    """
    active = as_bool_mask(mask, mask)
    positions = torch.arange(active.shape[-1], device=active.device)
    # A row without active tokens has index -1, which matches no position.
    at_last = positions == last_token_index(active).unsqueeze(-1)
    return torch.where(at_last, rewards.to(float_dtype(rewards)).unsqueeze(-1), 0.0)


def clip_rewards(rewards: Tensor, bound: float) -> Tensor:
    """Clip rewards to [-δ, δ] (Zheng et al. 2023, Secrets of RLHF Part I, Eq. 18; OpenRLHF uses δ = 10).

    NaN stays NaN.
    """
    if not bound > 0:
        raise ValueError(f"clip_rewards: bound must be positive, got {bound}")
    return rewards.clamp(min=-bound, max=bound)


def scale_rewards(rewards: Tensor, std: float | Tensor, eps: float = 1e-8) -> Tensor:
    """Reward scaling r̃ = r / (σ + eps), σ usually the running std of past rewards (PPO-max reward scaling,
    Zheng et al. 2023, Secrets of RLHF Part I; MOSS-RLHF). The mean is deliberately NOT subtracted.

    NaN stays NaN.
    """
    return rewards / (std + eps)


def normalize_rewards(rewards: Tensor, mean: float | Tensor, std: float | Tensor, eps: float = 1e-8) -> Tensor:
    """Reward normalisation r̃ = (r - μ) / (σ + eps), μ and σ usually running moments (Zheng et al. 2023, Secrets of
    RLHF Part I, Eq. 18, followed there by :func:`clip_rewards`).

    NaN stays NaN.
    """
    return (rewards - mean) / (std + eps)
