"""Returns and advantages: discounted reward-to-go, GAE, and the critic-free baselines (RLOO, group mean, b_MA).

Token-level functions take (B, T) tensors and a (B, T) 0/1 ``mask``; values at masked positions never influence
active positions and outputs there are 0. Sequence-level functions take (N,) rewards laid out like TRL 1.16: the
``num_generations`` completions of one prompt are consecutive (``rewards.view(-1, num_generations)``).

Holes: a masked position between two active tokens of a row (a tool output inside a completion) is transparent in
every token-level function here. The policy's tokens on either side are consecutive actions: a hole spends no
discount (γ, γλ), carries no reward and no value, and does not reset the reward-to-go. :func:`discounted_cumsum` is
the one place this rule is implemented (a stable gather of each row's tokens, the scan, a scatter back);
:func:`gae_advantages` uses the same compaction so that V_{t+1} is the next policy token's value.
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
    "interior_holes",
    "moving_average_advantages",
    "raft_advantages",
    "rloo_advantages",
    "vanilla_reinforce_advantages",
]


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def interior_holes(mask: Tensor) -> Tensor:
    """Bool (B, T) tensor marking the interior holes of each row: masked positions with an active token on both
    sides (tool outputs inside a completion). Leading and trailing masked positions (padding) are not holes."""
    active = as_bool_mask(mask, mask)
    seen_before = active.cumsum(-1) > 0
    seen_after = active.flip(-1).cumsum(-1).flip(-1) > 0
    return ~active & seen_before & seen_after


def _compaction_order(active: Tensor, padding_too: bool = False) -> Tensor:
    """Stable permutation of each row that moves its interior holes (with ``padding_too``, every masked position)
    behind its active tokens, which keep their order and become contiguous. The identity for a row with nothing to
    move, so hole-free rows are computed exactly as without it. Undo with ``scatter(-1, order, packed)``."""
    moved = ~active if padding_too else interior_holes(active)
    return torch.argsort(moved.to(torch.int8), dim=-1, stable=True)


def _reverse_scan(x0: Tensor, discount: float, chunk_size: int) -> Tensor:
    """y_t = x_t + discount · y_{t+1} over every position of ``x0`` (already zero where masked), chunked."""
    length = x0.shape[-1]
    wd = x0.dtype
    if discount == 1.0:
        return x0.flip(-1).cumsum(-1).flip(-1)
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
    return torch.cat(chunk_outputs[::-1], dim=-1)[..., pad:]


def discounted_cumsum(x: Tensor, mask: Tensor, discount: float, chunk_size: int = 256) -> Tensor:
    """Discounted reverse cumulative sum over the active tokens, y_t = Σ_{i>=t active} discount^(n(t, i)) · x_i with
    n(t, i) the number of active tokens after t up to i (the reward-to-go / GAE recursion y_t = x_t + discount ·
    y_{next(t)}, Schulman et al. 2016, GAE).

    Masked x are treated as 0 and outputs at masked positions are 0. Interior holes in the mask (tool outputs inside
    a completion) are transparent: the active tokens on either side are consecutive steps, so a hole spends no factor
    of ``discount``, adds nothing and does not reset the sum. Implemented once: each row's interior holes are moved
    behind its tokens (a stable gather; the identity for a row without interior holes), scanned, and scattered back.
    For right- or left-padded rows this is the plain recursion. The scan is vectorised: discount = 1 is a reverse
    cumsum; otherwise the time axis is cut into chunks of ``chunk_size``, every chunk is summed locally by one
    batched matmul with a (C, C) upper-triangular matrix of discount powers, and the chunks are stitched from the
    end by carrying the value entering each chunk from its right, times discount^(distance). Half-precision input is
    accumulated in float32. (On GPUs with TF32 matmuls enabled the chunk sums inherit TF32 precision.)

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
    if x0.shape[-1] == 0:
        return x0.to(float_dtype(x))
    if discount == 1.0:
        # Zeros at holes add exactly nothing to a plain reverse cumsum: holes are transparent already.
        y = _reverse_scan(x0, discount, chunk_size)
    else:
        order = _compaction_order(active)
        packed = _reverse_scan(x0.gather(-1, order), discount, chunk_size)
        y = torch.zeros_like(packed).scatter(-1, order, packed)
    return torch.where(active, y, 0.0).to(float_dtype(x))


def discounted_returns(token_rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Reward-to-go G_t = Σ_{i>=t} γ^(i-t) r_i over active tokens, the REINFORCE++ advantage before normalisation
    (Hu 2025, REINFORCE++ v1, Eq. 7; v9, Eq. 4).

    With outcome reward r at the last token and per-token KL shaping, γ = 1 gives A_t = r - β Σ_{i>=t} KL_i. Holes
    in the mask are transparent (see :func:`discounted_cumsum`): with mask [1, 1, 0, 0, 1, 1] and reward r at the
    last token, G = [γ³r, γ²r, 0, 0, γr, r].
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
    the next *active* token (each row is compacted as in :func:`discounted_cumsum`), so a hole neither bootstraps
    from a value, carries a reward, nor spends a factor of γλ (verl's GAE does the same); the critic's targets R_t
    are 0 there. For right-padded masks this is the plain recursion.

    Returns:
        (advantages, returns), both (B, T) and 0 at masked positions.
    """
    _check_unit_interval("gamma", gamma)
    _check_unit_interval("lam", lam)
    active = as_bool_mask(mask, values)
    wd = work_dtype(values)
    # The same compaction as discounted_cumsum's, padding included: each row's active tokens move to the front in
    # order, so "t + 1" is the next active token and every hole becomes right padding.
    order = _compaction_order(active, padding_too=True)
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


def raft_advantages(rewards: Tensor, num_generations: int) -> Tensor:
    """Reward-ranked fine-tuning (RAFT, Dong et al. 2023): the best of the k samples of a prompt gets advantage 1,
    the others 0, so the policy gradient is the supervised (SFT) gradient on the best-of-k completions. Back to
    Basics (Ahmadian et al. 2024) compares against it (its Table 1, "RAFT").

    Same (N,) layout as :func:`rloo_advantages`. Ties: the first of the tied best samples (in the group's order) is
    chosen, so exactly one sample per group gets 1. NaN (unscorable) rewards are never chosen and keep advantage NaN,
    like the other baselines (the caller replaces NaN by 0); a group whose rewards are all NaN gets NaN everywhere.
    """
    if num_generations < 1:
        raise ValueError(f"raft_advantages: num_generations must be >= 1, got {num_generations}")
    grouped = _group(rewards, num_generations, "raft_advantages")
    unscorable = torch.isnan(grouped)
    # argmax returns the first maximum, which fixes the tie rule; NaN is lowered to -inf so it is never the best.
    best = torch.where(unscorable, float("-inf"), grouped).argmax(dim=1, keepdim=True)
    advantages = torch.zeros_like(grouped).scatter(1, best, 1.0)
    return torch.where(unscorable, float("nan"), advantages).reshape(rewards.shape)


def vanilla_reinforce_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with no baseline (Williams 1992), A_i = R_i: the raw (shaped) sequence reward is the advantage.
    Back to Basics (Ahmadian et al. 2024) compares against it (its Table 1, "Vanilla PG"). NaN stays NaN."""
    return rewards.to(float_dtype(rewards)).clone()
