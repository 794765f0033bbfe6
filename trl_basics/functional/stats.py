"""Masked, distribution-aware statistics: sums, means, moments, whitening, running moments and baselines.

Global statistics never import a distributed backend. Functions that need them take ``reduce_fn``, a callable that
returns the element-wise SUM of a tensor over all processes (e.g. ``lambda t: accelerator.reduce(t, "sum")``);
``None`` means a single process. Each call packs its local statistics into ONE float64 tensor, so one collective
suffices, and every process derives identical global results from the reduced tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ._utils import ReduceFn, accumulation_dtype, all_reduce_sum, as_bool_mask, float_dtype, work_dtype

__all__ = [
    "MovingAverageBaseline",
    "RunningMoments",
    "explained_variance",
    "masked_mean",
    "masked_moments",
    "masked_sum",
    "masked_whiten",
]


def _global_sums(x: Tensor, mask: Tensor | None, reduce_fn: ReduceFn | None) -> tuple[Tensor, Tensor, Tensor]:
    """Global (count, Σx, Σx²) over active, non-NaN entries, in float64, with a single collective."""
    active = as_bool_mask(mask, x) & ~torch.isnan(x)
    acc = accumulation_dtype(x.device)
    # torch.where (not multiplication) so that inf/NaN garbage at inactive positions cannot leak in as 0 * inf.
    x_active = torch.where(active, x.to(acc), 0.0)
    packed = torch.stack([active.sum().to(acc), x_active.sum(), x_active.square().sum()])
    count, total, total_sq = all_reduce_sum(packed, reduce_fn).unbind()
    return count, total, total_sq


def _finite_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Active entries that are also finite: what a running statistic may absorb (an inf would poison it for good)."""
    return as_bool_mask(mask, x) & torch.isfinite(x)


def _moments_from_sums(count: Tensor, total: Tensor, total_sq: Tensor, ddof: int) -> tuple[Tensor, Tensor]:
    """(mean, var) from power sums; degenerate counts give 0 instead of NaN so downstream maths stays finite."""
    mean = total / count.clamp(min=1.0)
    # Rounding can push Σx² - n·μ² a hair below zero for near-constant data.
    m2 = (total_sq - total * mean).clamp(min=0.0)
    var = m2 / (count - ddof).clamp(min=1.0)
    return mean, var


def masked_sum(x: Tensor, mask: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Sum of ``x`` over active entries: Σ_t mask_t · x_t (inactive entries count as exactly 0, even if inf/NaN).

    Args:
        x: values, e.g. (B, T).
        mask: 0/1 tensor (bool or float) broadcastable to ``x``.
        dim: dimension(s) to reduce; ``None`` reduces everything to a scalar.
    """
    x_active = torch.where(as_bool_mask(mask, x), x.to(float_dtype(x)), 0.0)
    return x_active.sum() if dim is None else x_active.sum(dim=dim)


def masked_mean(
    x: Tensor,
    mask: Tensor,
    dim: int | tuple[int, ...] | None = None,
    reduce_fn: ReduceFn | None = None,
) -> Tensor:
    """Mean of ``x`` over active entries: Σ_t mask_t · x_t / Σ_t mask_t.

    With ``dim=None`` the mean is global: the local (count, sum) pair is summed over processes with ``reduce_fn``
    (one collective) and every process gets the same value. ``reduce_fn`` is only meaningful with ``dim=None``.
    An empty selection gives 0 (the count is clamped to 1). NaN at active entries propagates (use
    :func:`masked_moments` to skip NaN).
    """
    out_dtype = float_dtype(x)
    active = as_bool_mask(mask, x)
    if dim is not None:
        if reduce_fn is not None:
            raise ValueError("masked_mean: reduce_fn is only supported with dim=None (a global mean)")
        wd = work_dtype(x)
        total = torch.where(active, x.to(wd), 0.0).sum(dim=dim)
        count = active.sum(dim=dim).to(wd).clamp(min=1.0)
        return (total / count).to(out_dtype)
    acc = accumulation_dtype(x.device)
    packed = torch.stack([active.sum().to(acc), torch.where(active, x.to(acc), 0.0).sum()])
    count, total = all_reduce_sum(packed, reduce_fn).unbind()
    return (total / count.clamp(min=1.0)).to(out_dtype)


def window_mean(x: Tensor, mask: Tensor, normalizer: Tensor | float | None = None) -> Tensor:
    """Token mean of ``x`` over its active entries, as a share of a larger batch: Σ_t mask_t · x_t / ``normalizer``.

    ``normalizer`` is this micro-batch's share of the whole batch the mean is taken over, e.g. the active tokens of
    a gradient accumulation window on every process divided by the number of processes (DDP averages gradients over
    processes). Summed over the window's micro-batches, and averaged over processes, the terms give the token mean
    of the whole window, however it is split. ``None`` gives the micro-batch's own token mean (:func:`masked_mean`).
    A normaliser below 1 is clamped to 1.
    """
    if normalizer is None:
        return masked_mean(x, mask)
    total = masked_sum(x, mask)
    if isinstance(normalizer, Tensor):
        return total / normalizer.to(total.dtype).clamp(min=1.0)
    return total / max(float(normalizer), 1.0)


def masked_moments(
    x: Tensor,
    mask: Tensor | None = None,
    reduce_fn: ReduceFn | None = None,
    unbiased: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Global mean, variance and count of ``x`` over all active entries of all processes.

    μ = Σx / n,  Var = (Σx² - n·μ²) / (n - ddof), ddof = 1 if ``unbiased`` else 0 (population variance).

    The local (n, Σx, Σx²) are packed into one float64 tensor and summed with ``reduce_fn`` (one collective), so
    every process returns identical moments. NaN entries of ``x`` are treated as inactive (unscorable samples do not
    poison the statistics). ``mask=None`` means every entry is active. Degenerate counts give 0 rather than NaN:
    n = 0 yields μ = Var = 0, and the divisor n - ddof is clamped to at least 1.

    Returns:
        (mean, var, count): mean and var as 0-d tensors in ``x``'s floating dtype, count as a 0-d int64 tensor.
    """
    count, total, total_sq = _global_sums(x, mask, reduce_fn)
    mean, var = _moments_from_sums(count, total, total_sq, ddof=int(unbiased))
    out_dtype = float_dtype(x)
    return mean.to(out_dtype), var.to(out_dtype), count.round().to(torch.int64)


def masked_whiten(
    x: Tensor,
    mask: Tensor | None = None,
    center: bool = True,
    scale: bool = True,
    unbiased: bool = False,
    eps: float = 1e-8,
    reduce_fn: ReduceFn | None = None,
) -> Tensor:
    """Global whitening over active entries: (x - μ) · rsqrt(Var + eps) (Hu 2025, REINFORCE++ v9, Eq. 5).

    μ and Var come from :func:`masked_moments` over all processes (population variance unless ``unbiased``), so
    the advantages of the whole global batch share one normalisation. ``center=False`` keeps the mean and only
    scales, x · rsqrt(Var + eps); ``scale=False`` only centres, x - μ. Inactive positions are 0 in the output; NaN
    entries are excluded from the statistics and stay NaN.
    """
    active = as_bool_mask(mask, x)
    count, total, total_sq = _global_sums(x, active, reduce_fn)
    mean, var = _moments_from_sums(count, total, total_sq, ddof=int(unbiased))
    wd = work_dtype(x)
    out = x.to(wd)
    if center:
        out = out - mean.to(wd)
    if scale:
        out = out * torch.rsqrt(var + eps).to(wd)
    return torch.where(active, out, 0.0).to(float_dtype(x))


def explained_variance(
    values: Tensor,
    returns: Tensor,
    mask: Tensor,
    reduce_fn: ReduceFn | None = None,
) -> Tensor:
    """Explained variance of the critic over active tokens of all processes: 1 - Var[R - V] / Var[R].

    1 means perfect value predictions, 0 means no better than a constant, negative means worse. Both variances use
    the same count, so biased/unbiased does not matter. One collective; NaN when Var[R] = 0 (undefined).
    (Value-function diagnostic used with GAE critics, Schulman et al. 2016, GAE.)
    """
    active = as_bool_mask(mask, values)
    acc = accumulation_dtype(values.device)
    r = torch.where(active, returns.to(acc), 0.0)
    residual = torch.where(active, returns.to(acc) - values.to(acc), 0.0)
    packed = torch.stack([active.sum().to(acc), residual.sum(), residual.square().sum(), r.sum(), r.square().sum()])
    count, res_sum, res_sq, r_sum, r_sq = all_reduce_sum(packed, reduce_fn).unbind()
    _, var_residual = _moments_from_sums(count, res_sum, res_sq, ddof=0)
    _, var_returns = _moments_from_sums(count, r_sum, r_sq, ddof=0)
    ev = torch.where(var_returns > 0, 1.0 - var_residual / var_returns, torch.nan)
    return ev.to(float_dtype(values))


class RunningMoments:
    """Running mean/variance over every value seen so far (PPO-max reward scaling; Zheng et al. 2023, Secrets of RLHF
    Part I, MOSS-RLHF ``RunningMoments``).

    Each batch's global moments (n_b, μ_b, M2_b) are merged with the parallel formula of Chan et al. (1979):
    δ = μ_b - μ, n' = n + n_b, μ' = μ + δ·n_b/n', M2' = M2 + M2_b + δ²·n·n_b/n'. The result equals the moments of
    the concatenation of all batches. With ``reduce_fn`` every process merges the same global batch moments, so all
    processes hold identical state. NaN and ±inf entries are ignored, so the state never turns non-finite. Before any data, mean = 0 and var = std = 1 (a neutral
    scale, as MOSS-RLHF initialises it); with a single value, var = 0.
    """

    def __init__(self) -> None:
        self._count = 0.0
        self._mean = 0.0
        self._m2 = 0.0  # Σ (x - μ)² over everything seen

    @torch.no_grad()
    def update(
        self, x: Tensor, mask: Tensor | None = None, reduce_fn: ReduceFn | None = None
    ) -> tuple[Tensor, Tensor]:
        """Merge the global batch ``x`` (active, finite entries) into the running moments.

        Returns:
            The batch's global (mean, std), std unbiased, as 0-d tensors in ``x``'s floating dtype (0 for an empty
            batch, which leaves the state unchanged).
        """
        count_t, total, total_sq = _global_sums(x, _finite_mask(x, mask), reduce_fn)
        batch_mean_t, batch_var_t = _moments_from_sums(count_t, total, total_sq, ddof=1)
        out_dtype = float_dtype(x)
        batch_out = (batch_mean_t.to(out_dtype), batch_var_t.sqrt().to(out_dtype))
        # One read to the host for the three numbers (each read waits for the device).
        batch_count, batch_mean, batch_var = torch.stack(
            [count_t.to(torch.float64), batch_mean_t.to(torch.float64), batch_var_t.to(torch.float64)]
        ).tolist()
        if batch_count == 0:
            return batch_out
        batch_m2 = batch_var * max(batch_count - 1.0, 1.0)
        new_count = self._count + batch_count
        delta = batch_mean - self._mean
        new_mean = self._mean + delta * batch_count / new_count
        new_m2 = self._m2 + batch_m2 + delta * delta * self._count * batch_count / new_count
        if not (math.isfinite(new_mean) and math.isfinite(new_m2)):
            return batch_out  # cannot happen with finite float32 inputs; the state is never allowed to turn NaN
        self._mean, self._m2, self._count = new_mean, new_m2, new_count
        return batch_out

    @property
    def mean(self) -> float:
        """Running mean (0 before any data)."""
        return self._mean

    @property
    def var(self) -> float:
        """Unbiased running variance M2 / (n - 1) (1 before any data, 0 after a single value)."""
        if self._count == 0:
            return 1.0
        return self._m2 / max(self._count - 1.0, 1.0)

    @property
    def std(self) -> float:
        """Unbiased running standard deviation, sqrt(var)."""
        return math.sqrt(self.var)

    @property
    def count(self) -> float:
        """Number of values seen so far."""
        return self._count

    def state_dict(self) -> dict[str, float]:
        """Plain-float state for checkpointing."""
        return {"count": self._count, "mean": self._mean, "m2": self._m2}

    def load_state_dict(self, state_dict: Mapping[str, float]) -> None:
        """Restore the state written by :meth:`state_dict`."""
        missing = {"count", "mean", "m2"} - set(state_dict)
        if missing:
            raise KeyError(f"RunningMoments.load_state_dict: missing keys {sorted(missing)}")
        self._count = float(state_dict["count"])
        self._mean = float(state_dict["mean"])
        self._m2 = float(state_dict["m2"])

    def __repr__(self) -> str:
        return f"RunningMoments(count={self._count:g}, mean={self.mean:.6g}, std={self.std:.6g})"


class MovingAverageBaseline:
    """The moving-average baseline b_MA of REINFORCE with baseline (Ahmadian et al. 2024, Back to Basics, Eqs. 7-8).

    ``decay=None``: b is the cumulative mean of every reward seen so far (the paper's running mean of training
    rewards). ``decay`` in (0, 1): exponential moving average b <- decay·b + (1 - decay)·mean_batch(r), started at
    the first batch mean. Batch means are global over processes (via ``reduce_fn``) and ignore NaN and ±inf rewards.

    Usage: ``b = baseline.baseline_for(r, reduce_fn)``, advantages ``r - b``, THEN ``baseline.update(r, reduce_fn)``
    so a batch is never its own baseline (except for the first batch, which has no earlier baseline).
    """

    def __init__(self, decay: float | None = None) -> None:
        if decay is not None and not 0.0 < decay < 1.0:
            raise ValueError(f"MovingAverageBaseline: decay must be None or in (0, 1), got {decay}")
        self.decay = decay
        self._value: float | None = None
        self._count = 0.0  # rewards seen; weights the cumulative mean

    @property
    def value(self) -> float | None:
        """Current baseline b_MA, or None before the first update."""
        return self._value

    @torch.no_grad()
    def baseline_for(self, rewards: Tensor, reduce_fn: ReduceFn | None = None) -> Tensor:
        """Baseline to subtract from ``rewards`` before they are used to update it.

        Returns the current value, or, before the first update, the global NaN-ignoring mean of ``rewards`` (one
        collective, which all processes make together since they share the same state). 0-d tensor on
        ``rewards``' device in its floating dtype.
        """
        out_dtype = float_dtype(rewards)
        if self._value is not None:
            return torch.tensor(self._value, dtype=out_dtype, device=rewards.device)
        count, total, _ = _global_sums(rewards, _finite_mask(rewards, None), reduce_fn)
        return (total / count.clamp(min=1.0)).to(out_dtype)

    @torch.no_grad()
    def update(self, rewards: Tensor, reduce_fn: ReduceFn | None = None) -> Tensor:
        """Fold the global batch mean of ``rewards`` (NaN and ±inf ignored) into the baseline; returns that batch mean.

        An empty (or all-NaN) batch leaves the baseline unchanged.
        """
        count_t, total, _ = _global_sums(rewards, _finite_mask(rewards, None), reduce_fn)
        batch_mean_t = total / count_t.clamp(min=1.0)
        batch_count = float(count_t)
        if batch_count > 0:
            batch_mean = float(batch_mean_t)
            if self._value is None:
                self._value = batch_mean
            elif self.decay is None:
                # Cumulative mean over all rewards seen, weighted by how many each batch contributed.
                self._value += (batch_mean - self._value) * batch_count / (self._count + batch_count)
            else:
                self._value = self.decay * self._value + (1.0 - self.decay) * batch_mean
            self._count += batch_count
        return batch_mean_t.to(float_dtype(rewards))

    def state_dict(self) -> dict[str, float | None]:
        """Plain-float state for checkpointing (``value`` is None before the first update)."""
        return {"value": self._value, "count": self._count, "decay": self.decay}

    def load_state_dict(self, state_dict: Mapping[str, float | None]) -> None:
        """Restore the state written by :meth:`state_dict` (``decay`` is taken from the constructor, not the dict)."""
        if "value" not in state_dict or "count" not in state_dict:
            raise KeyError("MovingAverageBaseline.load_state_dict: expected keys 'value' and 'count'")
        value = state_dict["value"]
        self._value = None if value is None else float(value)
        self._count = float(state_dict["count"])  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"MovingAverageBaseline(decay={self.decay}, value={self._value})"
