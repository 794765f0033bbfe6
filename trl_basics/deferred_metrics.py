"""Training metrics logged as tensors and read to the host together, once per optimizer step.

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

__all__ = ["DeferredMetrics"]


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
