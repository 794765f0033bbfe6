"""The ``exact_length`` task: ``"count : 3"`` asks for exactly three words; the reward is ``1 / (1 + |words - 3|)``."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from trl_basics.kit.synthetic import FILLER_WORDS, Prompt, RewardFunc, SyntheticTask, last_match

__all__ = ["EXACT_LENGTH", "ExactLengthTask", "exact_length_reward"]


@dataclass(frozen=True)
class ExactLengthTask(SyntheticTask):
    """``"count : 3"``: produce exactly 3 words; the reward is ``1 / (1 + |number of words - 3|)``.

    Any words count (letters, digits, punctuation); the model has to learn when to emit EOS. A random tiny model
    rarely stops early (reward ~0.4); it learns the length within a few hundred RL steps.

    Attributes:
        min_count: Smallest requested length.
        max_count: Largest requested length (keep it below ``max_completion_length``).
    """

    name: str = "exact_length"
    max_words: int = 6
    min_count: int = 1
    max_count: int = 6

    _PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"\bcount\s*:\s*((?:\d\s*)+)")

    def __post_init__(self) -> None:
        if not 1 <= self.min_count <= self.max_count <= self.max_words:
            raise ValueError("Need 1 <= min_count <= max_count <= max_words.")

    @property
    def reward_func(self) -> RewardFunc:
        """[`exact_length_reward`]."""
        return exact_length_reward

    def sample_target(self, rng: random.Random) -> int:
        """Draw a length between ``min_count`` and ``max_count``."""
        return rng.randint(self.min_count, self.max_count)

    def format_prompt(self, target: int) -> str:
        """Return ``"count : <n>"``."""
        return f"count : {target}"

    def parse_target(self, text: str) -> int:
        """Return the number of the last ``count : <n>`` in ``text``."""
        # The tokenizer splits numbers into digits, so decoded prompts read "count : 1 2"; join the digits back.
        return int(re.sub(r"\s+", "", last_match(self._PATTERN, text, self.name)))

    def score(self, target: int, words: Sequence[str]) -> float:
        """``1 / (1 + |len(words) - target|)``."""
        return 1.0 / (1.0 + abs(len(words) - int(target)))

    def is_solution(self, target: int, words: Sequence[str]) -> bool:
        """Exactly ``target`` words."""
        return len(words) == int(target)

    def solve(self, target: int, rng: random.Random) -> list[str]:
        """``target`` random filler words."""
        return [rng.choice(FILLER_WORDS) for _ in range(int(target))]


EXACT_LENGTH = ExactLengthTask()


def exact_length_reward(
    prompts: Sequence[Prompt], completions: Sequence[Any], target: Sequence[int] | None = None, **kwargs: Any
) -> list[float]:
    """TRL reward function of the ``exact_length`` task: ``1 / (1 + |words - requested|)``.

    Args:
        prompts: Plain-text prompts or conversations.
        completions: Completion texts or assistant message lists.
        target: The dataset's ``target`` column (read from the prompts when absent).
        **kwargs: Other columns and TRL extras, ignored.
    """
    return EXACT_LENGTH.rewards(prompts, completions, target)
