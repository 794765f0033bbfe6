"""Returns and advantages: discounted reward-to-go, GAE, and the critic-free baselines (RLOO, group mean, b_MA).

Token-level functions take (B, T) tensors and a (B, T) 0/1 ``mask``; values at masked positions never influence
active positions and outputs there are 0. Sequence-level functions take (N,) rewards laid out like TRL 1.16: the
``num_generations`` completions of one prompt are consecutive (``rewards.view(-1, num_generations)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import as_bool_mask, float_dtype, work_dtype

__all__ = [
    "discounted_cumsum",
    "discounted_returns",
    "gae_advantages",
    "group_mean_advantages",
    "moving_average_advantages",
    "rloo_advantages",
]


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def discounted_cumsum(x: Tensor, mask: Tensor, discount: float, chunk_size: int = 256) -> Tensor:
    """Discounted reverse cumulative sum y_t = Σ_{i>=t} discount^(i-t) · x_i (the reward-to-go / GAE recursion
    y_t = x_t + discount · y_{t+1}, Schulman et al. 2016, GAE).

    Masked x are treated as 0 and outputs at masked positions are 0; the discount counts positions, so an interior
    hole in the mask still spends a factor of ``discount``. Vectorised: discount = 1 is a reverse cumsum; otherwise
    the time axis is cut into chunks of ``chunk_size``, every chunk is summed locally by one batched matmul with a
    (C, C) upper-triangular matrix of discount powers, and the chunks are stitched from the end by carrying the
    value entering each chunk from its right, times discount^(distance). Half-precision input is accumulated in
    float32. (On GPUs with TF32 matmuls enabled the chunk sums inherit TF32 precision.)

    Args:
        x: (B, T) per-token values (any leading batch dims work).
        mask: 0/1 mask of the same shape.
        discount: factor in [0, 1].
        chunk_size: chunk length C; memory and work per chunk are O(C²).
    """
    _check_unit_interval("discount", discount)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    active = as_bool_mask(mask, x)
    wd = work_dtype(x)
    x0 = torch.where(active, x.to(wd), 0.0)
    length = x0.shape[-1]
    if length == 0:
        return x0.to(float_dtype(x))
    if discount == 1.0:
        y = x0.flip(-1).cumsum(-1).flip(-1)
    else:
        chunk = min(chunk_size, length)
        num_chunks = -(-length // chunk)
        # Left-pad with zeros to a whole number of chunks; padding sits before t = 0 and cannot affect y.
        pad = num_chunks * chunk - length
        x_chunks = torch.nn.functional.pad(x0, (pad, 0)).unflatten(-1, (num_chunks, chunk))
        idx = torch.arange(chunk, device=x0.device)
        lag = (idx.unsqueeze(1) - idx.unsqueeze(0)).to(wd)  # lag[i, t] = i - t
        powers = torch.where(lag >= 0, torch.pow(discount, lag.clamp(min=0.0)), 0.0)
        y_chunks = x_chunks @ powers  # chunk-local sums: Σ_{i>=t in chunk} discount^(i-t) x_i
        # carry_powers[j] = discount^(C - j): distance from local position j to the first position of the next chunk.
        carry_powers = torch.pow(discount, (chunk - idx).to(wd))
        chunk_outputs = [y_chunks[..., -1, :]]
        for k in range(num_chunks - 2, -1, -1):  # loop over chunks, not tokens
            carry = chunk_outputs[-1][..., :1]  # full y at the first position of chunk k + 1
            chunk_outputs.append(y_chunks[..., k, :] + carry * carry_powers)
        y = torch.cat(chunk_outputs[::-1], dim=-1)[..., pad:]
    return torch.where(active, y, 0.0).to(float_dtype(x))


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go G_t = Σ_{i>=t} γ^(i-t) r_i over active tokens, the REINFORCE++ advantage before normalisation
    (Hu 2025, REINFORCE++ v1, Eq. 7; v9, Eq. 4).

    With outcome reward r at the last token and per-token KL shaping, γ = 1 gives A_t = r - β Σ_{i>=t} KL_i.
    """
    return discounted_cumsum(token_rewards, mask, gamma)


def gae_advantages(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, GAE), as used by PPO for RLHF (Zheng et al. 2023,
    Secrets of RLHF Part I).

    δ_t = r_t + γ V_{t+1} - V_t, with V_{t+1} = 0 after the last active token; A_t = Σ_{l>=0} (γλ)^l δ_{t+l};
    returns R_t = A_t + V_t (the critic's regression target).

    Masked positions inside a completion (tool outputs, which the policy did not choose) are transparent: "t + 1" is
    the next *active* token, so a hole neither bootstraps from a value nor spends a factor of γλ (verl's GAE does the
    same). For right-padded masks this is the plain recursion.

    Returns:
        (advantages, returns), both (B, T) and 0 at masked positions.
    """
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    active = as_bool_mask(mask, values)
    wd = work_dtype(values)
    # Move every row's active tokens to the front (stable, so in order): holes become right padding.
    order = torch.argsort((~active).to(torch.int8), dim=-1, stable=True)
    packed_active = active.gather(-1, order)
    v = torch.where(packed_active, values.to(wd).gather(-1, order), 0.0)
    r = torch.where(packed_active, token_rewards.to(wd).gather(-1, order), 0.0)
    # Padding values were zeroed above, so the shifted tensor already bootstraps with 0 past the last token.
    v_next = torch.cat([v[..., 1:], torch.zeros_like(v[..., :1])], dim=-1)
    deltas = r + gamma * v_next - v
    packed_advantages = discounted_cumsum(deltas, packed_active, gamma * lam)
    advantages = torch.zeros_like(packed_advantages).scatter(-1, order, packed_advantages)
    returns = torch.where(active, advantages + values.to(wd), 0.0)
    out_dtype = float_dtype(values)
    return advantages.to(out_dtype), returns.to(out_dtype)


def _group(rewards: Tensor, num_generations: int, caller: str) -> Tensor:
    if rewards.numel() % num_generations != 0:
        raise ValueError(
            f"{caller}: {rewards.numel()} rewards cannot be split into groups of num_generations={num_generations}"
        )
    return rewards.to(float_dtype(rewards)).reshape(-1, num_generations)


def rloo_advantages(rewards: Tensor, num_generations: int) -> Tensor:
    """REINFORCE leave-one-out advantages A_i = R_i - (1/(k-1)) Σ_{j≠i} R_j within each prompt's group of k samples
    (Ahmadian et al. 2024, Back to Basics, §2.3), NaN-aware exactly like TRL 1.16 ``RLOOTrainer``.

    ``rewards`` is (N,) with the k = ``num_generations`` samples of a prompt consecutive (``view(-1, k)``). The
    baseline averages the scorable (non-NaN) siblings only: b_i = (nansum(group) - R_i) / (n_scorable - 1).
    Unscorable samples therefore get NaN, and a group with a single scorable sample gives NaN (0/0). NaN is NOT
    replaced by 0 here: the caller does that (TRL uses ``nan_to_num`` after optional normalisation). Without NaN,
    A_i = k/(k-1) · (R_i - mean_group(R)).
    """
    if num_generations < 2:
        raise ValueError(
            f"rloo_advantages: num_generations must be >= 2 for a leave-one-out baseline, got {num_generations}"
        )
    grouped = _group(rewards, num_generations, "rloo_advantages")
    scorable = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
    baselines = (torch.nansum(grouped, dim=1, keepdim=True) - grouped) / (scorable - 1)
    return (grouped - baselines).reshape(rewards.shape)


def group_mean_advantages(rewards: Tensor, num_generations: int) -> Tensor:
    """Group-mean baseline A'_i = R_i - mean_group(R), inclusive mean and no std (Hu 2025, REINFORCE++-baseline,
    v9 Eq. 6; GRPO without the std division).

    Same (N,) layout as :func:`rloo_advantages`; the mean ignores NaN (``nanmean``) and NaN rewards stay NaN. The
    global normalisation of v9 Eq. 7 is :func:`masked_whiten` afterwards.
    """
    if num_generations < 1:
        raise ValueError(f"group_mean_advantages: num_generations must be >= 1, got {num_generations}")
    grouped = _group(rewards, num_generations, "group_mean_advantages")
    return (grouped - torch.nanmean(grouped, dim=1, keepdim=True)).reshape(rewards.shape)


def moving_average_advantages(rewards: Tensor, baseline: float | Tensor) -> Tensor:
    """REINFORCE with a moving-average baseline, A = R - b_MA (Ahmadian et al. 2024, Back to Basics, Eqs. 7-8).

    ``baseline`` comes from ``MovingAverageBaseline.baseline_for`` (computed BEFORE the baseline sees this batch).
    NaN stays NaN.
    """
    return rewards.to(float_dtype(rewards)) - baseline
