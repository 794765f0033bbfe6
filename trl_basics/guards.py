"""Guards that keep bad input from reaching the weights, with errors that name the input and the fix.

- ``GuardedRewardFunction`` wraps each plain reward function: an exception, a wrong length or a value that is not a
  number becomes an error naming the function; ``None``, NaN and ±inf become "unscorable" (NaN), which every stage
  leaves out and which ends with advantage 0, and are counted.
- ``NonFiniteGradientGuard`` skips an optimizer step whose gradients are not finite (no parameter moves), warns and
  counts it.
- ``check_prompt_lengths`` refuses, at init, prompts that cannot fit the model's context with the completion.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class GuardedRewardFunction:
    """A reward function with its output checked. Keeps ``__name__`` so TRL's metric names do not change."""

    def __init__(self, function: Callable[..., Sequence[Any]], name: str) -> None:
        functools.update_wrapper(self, function)
        self.__name__ = name
        self.function = function
        self.nonfinite = 0  # completions whose reward was NaN or ±inf, since the last read
        self.unscored = 0  # completions the function returned None for

    def __call__(self, *, prompts, completions, **kwargs) -> list[float | None]:
        try:
            output = self.function(prompts=prompts, completions=completions, **kwargs)
        except Exception as err:
            raise RuntimeError(
                f"reward function {self.__name__!r} raised {type(err).__name__}: {err} (on a batch of "
                f"{len(completions)} completions). Fix the function, or make it return None for a completion it "
                "cannot score (that completion is then left out and gets advantage 0)."
            ) from err
        if isinstance(output, torch.Tensor):
            output = output.detach().cpu().tolist()
        if not isinstance(output, Sequence) or isinstance(output, (str, bytes)):
            raise TypeError(
                f"reward function {self.__name__!r} returned {type(output).__name__}; it must return a list with one "
                f"number (or None) per completion ({len(completions)} here)"
            )
        if len(output) != len(completions):
            raise ValueError(
                f"reward function {self.__name__!r} returned {len(output)} rewards for {len(completions)} completions; "
                "return exactly one reward (or None) per completion"
            )
        checked: list[float | None] = []
        for index, value in enumerate(output):
            if value is None:
                self.unscored += 1
                checked.append(None)
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(
                    f"reward function {self.__name__!r} returned {value!r} ({type(value).__name__}) for completion "
                    f"{index}; rewards must be numbers, or None for a completion it cannot score"
                )
            value = float(value)
            if not math.isfinite(value):
                self.nonfinite += 1
                checked.append(None)  # unscorable: left out of every statistic, advantage 0
                continue
            checked.append(value)
        return checked

    def pop_counts(self) -> tuple[int, int]:
        counts = (self.nonfinite, self.unscored)
        self.nonfinite = self.unscored = 0
        return counts


def guard_reward_functions(reward_funcs: list[Any]) -> list[Any]:
    """Wrap every plain synchronous reward function; reward models and async functions are left as they are."""
    from trl.trainer.utils import is_async_callable  # the same test TRL uses to route async functions

    guarded = []
    for function in reward_funcs:
        if isinstance(function, torch.nn.Module) or isinstance(function, GuardedRewardFunction):
            guarded.append(function)
        elif callable(function) and not is_async_callable(function):
            guarded.append(GuardedRewardFunction(function, getattr(function, "__name__", type(function).__name__)))
        else:
            guarded.append(function)
    return guarded


class NonFiniteGradientGuard(TrainerCallback):
    """Skip an optimizer step whose gradient is NaN or infinite: no parameter moves, the step is counted.

    Runs after gradient clipping and before ``optimizer.step()``. Gradients are already reduced over processes, so
    every process makes the same decision. Setting ``grad`` to ``None`` makes torch optimizers leave a parameter, and
    its optimizer state, untouched.
    """

    def __init__(self, on_skip: Callable[[int], None] | None = None) -> None:
        self.skipped = 0
        self.on_skip = on_skip

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return control
        norms = torch.stack([g.detach().float().norm() for g in grads])
        if bool(torch.isfinite(norms).all()):
            return control
        for parameter in model.parameters():
            parameter.grad = None
        self.skipped += 1
        logger.warning(
            "step %d: the gradient is not finite (NaN or inf); the optimizer step was skipped (%d so far). "
            "Check the reward functions and the learning rate.",
            state.global_step,
            self.skipped,
        )
        if self.on_skip is not None:
            self.on_skip(self.skipped)
        return control


def check_prompt_lengths(dataset, processing_class, max_positions: int | None, max_completion_length: int | None) -> None:
    """Refuse prompts that cannot fit the model's context together with ``max_completion_length`` new tokens."""
    if max_positions is None or dataset is None or not hasattr(dataset, "__len__") or "prompt" not in getattr(
        dataset, "column_names", ()
    ):
        return
    from trl.data_utils import maybe_apply_chat_template

    budget = max_positions - (max_completion_length or 0)
    rows = min(len(dataset), 2048)  # enough to catch a systematic problem without tokenizing a whole corpus
    too_long = []
    for index in range(rows):
        prompt = maybe_apply_chat_template({"prompt": dataset[index]["prompt"]}, processing_class)["prompt"]
        length = len(processing_class(text=prompt, add_special_tokens=False)["input_ids"])
        if length > budget:
            too_long.append((index, length))
    if too_long:
        index, length = too_long[0]
        raise ValueError(
            f"{len(too_long)} of the first {rows} prompts do not fit the model's context: prompt {index} has {length} "
            f"tokens, and with max_completion_length={max_completion_length} the model's "
            f"max_position_embeddings={max_positions} leaves room for {budget}. Drop or shorten the long prompts "
            "(e.g. dataset.filter), or lower max_completion_length."
        )


def check_reward_sources(reward_funcs: Any) -> None:
    """Refuse a reward model given as a local path that does not exist, before TRL tries it as a hub id."""
    import os

    for source in reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]:
        if not isinstance(source, (str, os.PathLike)):
            continue
        path = os.fspath(source)
        looks_local = path.startswith(("/", "./", "../", "~")) or os.sep in path and os.path.exists(path.split(os.sep)[0])
        if os.path.isdir(path):
            if not os.path.exists(os.path.join(path, "config.json")):
                raise ValueError(
                    f"reward model folder {path!r} has no config.json; pass a folder written by save_pretrained "
                    "(a sequence-classification model with one label)"
                )
        elif looks_local:
            raise ValueError(
                f"reward model {path!r} does not exist. Check the path, or train one first (e.g. with TRL's "
                "RewardTrainer) and pass the folder it saved."
            )


def check_padding(processing_class: Any) -> None:
    """TRL pads with the EOS token when there is no pad token; with neither, generation cannot batch."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if tokenizer is not None and getattr(tokenizer, "pad_token", None) is None:
        raise ValueError(
            "the tokenizer has no pad token and no EOS token, so completions cannot be batched. Set one, e.g. "
            "tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the model's embeddings."
        )
