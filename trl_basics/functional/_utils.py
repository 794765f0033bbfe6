"""Private helpers shared by the functional modules (mask handling, accumulation dtype, injected all-reduce)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ReduceFn = Callable[[Tensor], Tensor]


def as_bool_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """Return ``mask`` as a bool tensor broadcast to ``like``'s shape; ``None`` means every element is active."""
    if mask is None:
        return torch.ones_like(like, dtype=torch.bool)
    mask = mask if mask.dtype == torch.bool else mask != 0
    if mask.shape != like.shape:
        try:
            mask = mask.expand(like.shape)
        except RuntimeError as err:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not match tensor of shape {tuple(like.shape)}"
            ) from err
    return mask


def float_dtype(x: Tensor) -> torch.dtype:
    """The floating dtype results are returned in: ``x``'s own dtype, or the default float for integer/bool input."""
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


def work_dtype(x: Tensor) -> torch.dtype:
    """Dtype for elementwise work: at least float32, because half-precision scans and products lose too much."""
    dtype = float_dtype(x)
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def accumulation_dtype(device: torch.device) -> torch.dtype:
    """float64 for moments and counts; MPS has no float64, so it falls back to float32 there."""
    return torch.float32 if device.type == "mps" else torch.float64


def all_reduce_sum(packed: Tensor, reduce_fn: ReduceFn | None) -> Tensor:
    """Sum ``packed`` over processes with the injected ``reduce_fn`` (identity in a single process)."""
    if reduce_fn is None:
        return packed
    reduced = reduce_fn(packed)
    if reduced.shape != packed.shape:
        raise ValueError(f"reduce_fn must return a tensor of shape {tuple(packed.shape)}, got {tuple(reduced.shape)}")
    return reduced.to(packed.dtype)
