"""Guards that keep bad input from reaching the weights, with errors that name the input and the fix.

- ``GuardedRewardFunction`` wraps each plain reward function: an exception, a wrong length or a value that is not a
  number becomes an error naming the function; ``None``, NaN and ±inf (judged in float32) become "unscorable" (NaN), which every stage
  leaves out and which ends with advantage 0, and are counted.
- ``NonFiniteGradientGuard`` skips an optimizer step whose gradients are not finite (no parameter moves), warns and
  counts it.
- ``check_prompt_lengths`` refuses, at init, prompts that cannot fit the model's context with the completion.
- ``check_dataset`` refuses, before the models load, an empty dataset, a missing ``prompt`` column, an empty or
  malformed prompt and a mix of plain and conversational prompts; it accepts whatever the TRL parent accepts (every
  split of a ``DatasetDict``, iterable datasets, prompts supplied by an environment or a rollout function).
- ``guard_reward_tensor`` turns ±inf from reward models into unscorable NaN, counted like a function's.
- ``warn_truncated_vllm_sampling`` warns, at init, when vLLM samples with ``top_k``/``top_p`` while TRL's
  importance-sampling correction is on: vLLM's log-probs are those of the truncated distribution.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class GuardedRewardFunction:
    """A reward function with its output checked. Keeps ``__name__`` (and, through ``__wrapped__``, the signature)
    so TRL's metric names and calling conventions do not change.

    It is called exactly as TRL calls the function (any positional and keyword arguments, e.g. ``environments=`` for
    an environment-owned reward) and accepts whatever TRL accepts: any sized iterable of numbers or ``None`` (a list,
    a tuple, a 1-D numpy array or torch tensor), numbers including bools, numpy scalars and one-element tensors.
    Finiteness is judged in float32, the dtype TRL stores rewards in: 1e39 is ``inf`` there and counts as non-finite.
    """

    def __init__(self, function: Callable[..., Sequence[Any]], name: str) -> None:
        functools.update_wrapper(self, function)
        self.__name__ = name
        self.function = function
        self.nonfinite = 0  # completions whose reward was NaN or ±inf in float32, since the last read
        self.unscored = 0  # completions the function returned None for

    def __call__(self, *args: Any, **kwargs: Any) -> list[float | None]:
        expected = _batch_size(args, kwargs)
        try:
            output = self.function(*args, **kwargs)
        except Exception as err:
            batch = f" (on a batch of {expected} completions)" if expected is not None else ""
            raise RuntimeError(
                f"reward function {self.__name__!r} raised {type(err).__name__}: {err}{batch}. Fix the function, or "
                "make it return None for a completion it cannot score (that completion is then left out and gets "
                "advantage 0)."
            ) from err
        values = self._as_list(output, expected)
        checked: list[float | None] = []
        for index, value in enumerate(values):
            if value is None:
                self.unscored += 1
                checked.append(None)
                continue
            number = self._as_number(value, index)
            if not _finite_in_float32(number):
                self.nonfinite += 1
                checked.append(None)  # unscorable: left out of every statistic, advantage 0
                continue
            checked.append(number)
        return checked

    def _as_list(self, output: Any, expected: int | None) -> list[Any]:
        shape = f" with one number (or None) per completion ({expected} here)" if expected is not None else ""
        zero_dim = isinstance(output, (torch.Tensor, np.ndarray)) and output.ndim == 0
        if zero_dim or isinstance(output, (str, bytes, Mapping)) or not isinstance(output, Iterable):
            raise TypeError(
                f"reward function {self.__name__!r} returned {type(output).__name__}"
                f"{' of shape ()' if zero_dim else ''}; it must return a list (or a 1-D numpy array or torch "
                f"tensor){shape}"
            )
        values = list(output.detach().cpu()) if isinstance(output, torch.Tensor) else list(output)
        if expected is not None and len(values) != expected:
            raise ValueError(
                f"reward function {self.__name__!r} returned {len(values)} rewards for {expected} completions; "
                "return exactly one reward (or None) per completion"
            )
        return values

    def _as_number(self, value: Any, index: int) -> float:
        size = value.numel() if isinstance(value, torch.Tensor) else getattr(value, "size", None)
        if isinstance(value, (torch.Tensor, np.ndarray, np.generic)) and size == 1:
            value = value.item()
        if not isinstance(value, numbers.Real):  # bools are numbers too (True is 1.0), as in TRL
            raise TypeError(
                f"reward function {self.__name__!r} returned {value!r} ({type(value).__name__}) for completion "
                f"{index}; rewards must be numbers, or None for a completion it cannot score"
            )
        try:
            return float(value)
        except OverflowError:  # an int too large for a float is inf in float32 as well
            return math.inf

    def pop_counts(self) -> tuple[int, int]:
        counts = (self.nonfinite, self.unscored)
        self.nonfinite = self.unscored = 0
        return counts


def _batch_size(args: tuple, kwargs: dict) -> int | None:
    """How many rewards TRL will expect: one per completion (or per environment for environment-owned rewards)."""
    for key in ("completions", "prompts", "completion_ids", "environments"):
        value = kwargs.get(key)
        if value is not None and hasattr(value, "__len__"):
            return len(value)
    return None


def _finite_in_float32(value: float) -> bool:
    """Whether ``value`` stays finite once stored as float32, as TRL stores rewards (|x| >= 3.4028236e38 is inf)."""
    if not math.isfinite(value):
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(value)))


def guard_reward_functions(reward_funcs: list[Any]) -> list[Any]:
    """Wrap every plain synchronous reward function; reward models and async functions are left as they are."""
    # The same tests TRL uses to route async functions and to name a function in its metrics.
    from .seams import get_callable_name, is_async_callable

    guarded = []
    for function in reward_funcs:
        if isinstance(function, (torch.nn.Module, GuardedRewardFunction)):
            guarded.append(function)
        elif callable(function) and not is_async_callable(function):
            guarded.append(GuardedRewardFunction(function, get_callable_name(function)))
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


def check_prompt_lengths(
    dataset, processing_class, max_positions: int | None, max_completion_length: int | None
) -> None:
    """Refuse prompts that cannot fit the model's context together with ``max_completion_length`` new tokens."""
    if (
        max_positions is None
        or dataset is None
        or not hasattr(dataset, "__len__")
        or "prompt" not in getattr(dataset, "column_names", ())
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
        looks_local = (
            path.startswith(("/", "./", "../", "~")) or os.sep in path and os.path.exists(path.split(os.sep)[0])
        )
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


def guard_reward_tensor(rewards_per_func: torch.Tensor, reward_funcs: Sequence[Any]) -> list[int]:
    """Turn ±inf (and, for reward models, NaN) in TRL's gathered ``(N, n_funcs)`` reward tensor into NaN, in place.

    Checked functions never put an infinity there; reward models (a float16 head that overflows) and async
    functions can. Returns the number of values turned unscorable per function, over the global batch.
    """
    counts = []
    for column, function in enumerate(reward_funcs):
        values = rewards_per_func[:, column]
        if isinstance(function, torch.nn.Module):
            bad = ~torch.isfinite(values)  # a model never means "unscorable": NaN is a fault too
        else:
            bad = torch.isinf(values)  # NaN already is TRL's "None"
        counts.append(int(bad.sum()))
        values[bad] = torch.nan
    return counts


# How many rows the data checks read (in slices, so a large Arrow table is not turned into Python all at once).
DATA_CHECK_ROWS = 100_000


def check_dataset(
    dataset: Any, name: str = "train_dataset", *, environment: bool = False, rollout_func: bool = False
) -> None:
    """Refuse, before anything is loaded, a dataset that training would fail on (or silently skip) later.

    Checks: the dataset is not empty; it has a ``prompt`` column; no prompt is empty or ``None``; every prompt is
    either plain text or a list of chat messages, not a mix of both. Reads at most ``DATA_CHECK_ROWS`` rows.
    ``eval_dataset`` may be a ``DatasetDict``, an ``IterableDatasetDict`` or a plain dict of datasets; each split is
    checked under its own name. An iterable dataset's rows are only known once training reads them: only its columns
    are checked.

    What the parent accepts is accepted: with an ``environment_factory`` (``environment``) the environment's
    ``reset()`` supplies the prompt, so the ``prompt`` column is optional (a routing dataset may carry only an
    ``environment`` column); with a ``rollout_func`` the prompts go to that function as they are, so only their
    presence is checked, not their form.
    """
    if dataset is None:
        return
    if isinstance(dataset, Mapping):  # DatasetDict, IterableDatasetDict, dict[str, Dataset | IterableDataset]
        for key, part in dataset.items():
            check_dataset(part, f"{name}[{key!r}]", environment=environment, rollout_func=rollout_func)
        return
    columns = getattr(dataset, "column_names", None)
    has_prompts = columns is None or "prompt" in columns
    if not has_prompts and not environment:
        shown = ", ".join(repr(c) for c in columns) or "none"
        raise ValueError(
            f"{name} has no 'prompt' column (its columns: {shown}). Every trainer samples completions for the "
            "'prompt' column: rename yours, e.g. dataset.rename_column('question', 'prompt')."
        )
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return  # an IterableDataset: rows are only known once training reads them
    rows = len(dataset)
    if rows == 0:
        raise ValueError(
            f"{name} is empty (0 rows), so there is nothing to train on. Check the file, the split or any "
            "filter applied to it, and pass a dataset with at least one prompt."
        )
    if columns is None or not has_prompts or rollout_func:
        return
    # Only the prompt column is read (other columns may hold images that would be decoded for nothing).
    source = dataset.select_columns(["prompt"]) if hasattr(dataset, "select_columns") else dataset
    first_kind: dict[str, int] = {}
    for start in range(0, min(rows, DATA_CHECK_ROWS), 1024):
        stop = min(start + 1024, rows, DATA_CHECK_ROWS)
        prompts = source[start:stop]["prompt"]
        for offset, prompt in enumerate(prompts):
            index = start + offset
            kind = _prompt_kind(prompt, index, name)
            first_kind.setdefault(kind, index)
    if len(first_kind) > 1:
        raise ValueError(
            f"{name} mixes plain-text prompts (the first is row {first_kind['text']}) with conversational ones, "
            f"lists of messages (the first is row {first_kind['conversational']}); one batch cannot hold both. "
            "Use one kind for every row, e.g. map plain prompts to [{'role': 'user', 'content': prompt}]."
        )


def _prompt_kind(prompt: Any, index: int, name: str) -> str:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError(
                f"{name} row {index} has an empty prompt (''); generation needs at least one prompt token. Drop "
                "empty prompts, e.g. dataset.filter(lambda row: len(row['prompt']) > 0)."
            )
        return "text"
    if isinstance(prompt, list):
        if not prompt:
            raise ValueError(
                f"{name} row {index} has an empty conversation ([]) as its prompt; it needs at least one message. "
                "Drop those rows, e.g. dataset.filter(lambda row: len(row['prompt']) > 0)."
            )
        if all(isinstance(message, Mapping) and "role" in message for message in prompt):
            return "conversational"
    raise ValueError(
        f"{name} row {index} has a prompt of type {type(prompt).__name__} ({_short(prompt)}); a prompt is either "
        "a string or a list of messages like [{'role': 'user', 'content': '...'}]. Fix or drop that row."
    )


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


TRUNCATED_SAMPLING_WARNING = (
    "use_vllm with top_k={top_k}, top_p={top_p} and vllm_importance_sampling_correction=True: vLLM reports the "
    "log-probs of the truncated, renormalised distribution it sampled from, while the trainer recomputes the full "
    "one, so every importance ratio pi_trainer/pi_vLLM is below 1 by the mass cut off ({mode}; sequence modes multiply "
    "it over the tokens and the mask modes may drop whole sequences). The advantages are unaffected (trl_basics builds "
    "them on the trainer's own log-probs); the loss is scaled down. Sample without truncation, or set "
    "vllm_importance_sampling_correction=False (see docs/scaling.md, 'Truncated sampling')."
)


def warn_truncated_vllm_sampling(args: Any) -> str | None:
    """The warning (logged and returned) for vLLM sampling with ``top_k``/``top_p`` under TRL's importance-sampling
    correction; ``None`` when the combination is not in use."""
    if not (getattr(args, "use_vllm", False) and getattr(args, "vllm_importance_sampling_correction", False)):
        return None
    top_k, top_p = getattr(args, "top_k", None), getattr(args, "top_p", 1.0)
    truncated = (top_k is not None and top_k > 0) or (top_p is not None and top_p < 1.0)
    if not truncated:
        return None
    message = TRUNCATED_SAMPLING_WARNING.format(
        top_k=top_k, top_p=top_p, mode=getattr(args, "vllm_importance_sampling_mode", None)
    )
    logger.warning(message)
    return message
