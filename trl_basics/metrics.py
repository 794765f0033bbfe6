"""How trl_basics logs metrics: one path, tensors read to the host together once per optimizer step.

Every metric goes through ``log(name, value)``: the trick context's ``ctx.log`` inside tricks, and the trainer's
``metric_log()`` (see ``trl_basics/seams.py``) elsewhere; both end in :class:`DeferredMetrics`. The names the
trainers log outside the tricks are defined once here (a trick's metrics are ``tricks/<trick name>/<metric>``).

Reading a tensor that lives on a GPU (``float(t)``, ``t.item()``) makes the host wait until every queued kernel has
run. The trainers log a few dozen scalars per step; reading each on its own would stall the host that many times.
[`DeferredMetrics`] keeps the 0-dim tensors it is given and, at the end of the optimizer step (before the Trainer
logs), reads them all in one ``tolist()`` per device, appending each value to its metric list as a float.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = ["DeferredMetrics", "log_distribution"]

# Metric names the trainers log (the collapse alarm, the reports and the benchmarks read them from here).
PERPLEXITY = "perplexity"
KL_TO_REFERENCE = "kl_to_ref/k1_token_mean"  # k1 KL of the sampling policy to π_ref, per token, whatever the penalty
REWARD_RAW_MEAN = "reward_raw/mean"
REWARD_TRANSFORMED_MEAN = "reward_transformed/mean"
REWARD_TRANSFORMED_STD = "reward_transformed/std"
ENTROPY = "entropy"
CLIP_RATIO = "clip_ratio/region_mean"
AUX_LOSS = "aux_loss"
GUARD_SKIPPED_STEPS = "guard/skipped_steps"
MEMORY_RSS_BUILT = "memory/rss_built_mb"  # resident memory of the built trainer, logged once
PARENT_KL = "kl"  # the TRL parent's own KL metric (k3), watched when no trick gives one
TRICK_PREFIX = "tricks"


def trick_metric(trick_name: str, metric: str) -> str:
    """The full name of a metric a trick logs through its scoped context."""
    return f"{TRICK_PREFIX}/{trick_name}/{metric}"


def reward_guard_metric(reward_name: str, kind: str) -> str:
    """``reward_guard/<reward function>/<nonfinite|none>``."""
    return f"reward_guard/{reward_name}/{kind}"


def log_distribution(ctx: Any, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
    """Log the global mean/std/min/max of a (B,) or (B, T) tensor over active entries, in one reduce and one gather.

    No host read: masked reductions instead of boolean indexing (whose size the host must know).
    """
    active = mask.bool() if values.dim() == 2 else mask.bool().any(dim=1)
    values = values.float()
    picked = torch.where(active, values, 0.0)
    totals = ctx.reduce_sum(torch.stack([picked.sum(), (picked * picked).sum(), active.sum().float()]))
    count = totals[2].clamp(min=1.0)
    mean = totals[0] / count
    var = (totals[1] / count - mean * mean).clamp(min=0.0)
    big = torch.finfo(values.dtype).max
    # With no active entry the extremes are +big (min) and -big (max).
    extremes = ctx.gather(
        torch.stack([torch.where(active, values, big).min(), -torch.where(active, values, -big).max()]).unsqueeze(0)
    )
    ctx.log(f"{name}/mean", mean)
    ctx.log(f"{name}/std", var.sqrt())
    ctx.log(f"{name}/min", extremes[:, 0].min())
    ctx.log(f"{name}/max", -extremes[:, 1].min())


class DeferredMetrics(TrainerCallback):
    """A metric sink that defers tensor values to one read per step (a callback: it flushes on ``on_step_end``)."""

    def __init__(self) -> None:
        self.pending: list[tuple[MutableMapping[str, list], str, torch.Tensor]] = []

    def sink(self, metrics: MutableMapping[str, list], defer: bool = True) -> Callable[[str, Any], None]:
        """A ``log(name, value)`` appending to ``metrics[name]``: floats at once, tensors (one element) at the next
        [`flush`], or at once as a float when ``defer`` is false (evaluation, logged before any step ends)."""

        def log(name: str, value: Any) -> None:
            if not isinstance(value, torch.Tensor):
                metrics[name].append(value)
                return
            if value.numel() != 1:
                raise ValueError(f"metric {name!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
            if defer:
                self.pending.append((metrics, name, value.detach().reshape(())))
            else:
                metrics[name].append(float(value))

        return log

    def flush(self) -> None:
        """Append every pending value to its metric list: one host read per device holding any of them."""
        pending, self.pending = self.pending, []
        by_device: dict[torch.device, list] = {}
        for entry in pending:
            by_device.setdefault(entry[2].device, []).append(entry)
        for entries in by_device.values():
            values = torch.stack([value.to(torch.float32) for _, _, value in entries]).tolist()
            for (metrics, name, _), value in zip(entries, values, strict=True):
                metrics[name].append(value)

    def on_step_end(self, args, state, control, **kwargs):
        self.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.flush()
