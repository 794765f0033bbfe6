"""Synthetic tasks with programmatic, verifiable rewards that a tiny random model learns in a few hundred RL steps.

Every task writes short prompts in the kit tokenizer's vocabulary and scores a completion by its *words*: the pieces
the kit tokenizer splits text into (a run of letters, a single digit, or a run of punctuation; see [`split_words`]),
lower-cased. TRL decodes completions with ``skip_special_tokens=True``, so special tokens never count; literal
special-token strings (``"<eos>"``) are ignored too.

Tasks (see [`TASKS`]):

- ``target_letter``: ``"say : c"`` → reward = fraction of completion words equal to the letter (``"c c"`` scores 1).
- ``token_kind``: ``"say : digits"`` or ``"say : letters"`` → reward = fraction of completion words of that kind
  (single digits, or single letters).
- ``exact_length``: ``"count : 3"`` → reward = ``1 / (1 + |words - 3|)``; any three words score 1.

Each task's reward function follows TRL's contract ``reward_func(prompts, completions, **kwargs) -> list[float]``,
accepts plain-text and conversational prompts/completions, and uses the dataset's ``target`` column when TRL passes
it (otherwise the target is read from the prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from trl_basics.kit.exact_length import EXACT_LENGTH, ExactLengthTask, exact_length_reward
from trl_basics.kit.synthetic import (
    DIGITS,
    FILLER_WORDS,
    LETTERS,
    PUNCTUATION,
    RewardFunc,
    SyntheticTask,
    completion_text,
    prompt_text,
    split_words,
)
from trl_basics.kit.target_letter import TARGET_LETTER, TargetLetterTask, target_letter_reward
from trl_basics.kit.token_kind import TOKEN_KIND, TokenKindTask, token_kind_reward

__all__ = [
    "DIGITS",
    "EXACT_LENGTH",
    "FILLER_WORDS",
    "LETTERS",
    "PUNCTUATION",
    "TARGET_LETTER",
    "TASKS",
    "TOKEN_KIND",
    "ExactLengthTask",
    "RewardFunc",
    "SyntheticTask",
    "TargetLetterTask",
    "TokenKindTask",
    "completion_text",
    "exact_length_reward",
    "get_task",
    "prompt_text",
    "split_words",
    "target_letter_reward",
    "token_kind_reward",
]

TASKS: Mapping[str, SyntheticTask] = MappingProxyType(
    {task.name: task for task in (TARGET_LETTER, TOKEN_KIND, EXACT_LENGTH)}
)
"""The kit's tasks by name (read-only)."""


def get_task(name: str) -> SyntheticTask:
    """Return the task called ``name``; raise a `ValueError` listing the valid names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"Unknown task {name!r}; valid names: {', '.join(sorted(TASKS))}.") from None
