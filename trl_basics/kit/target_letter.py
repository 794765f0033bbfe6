"""The ``target_letter`` task: ``"say : c"`` asks for the letter ``c``; the reward is the share of completion words
equal to it."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from trl_basics.kit.synthetic import Prompt, RewardFunc, SyntheticTask, last_match

__all__ = ["TARGET_LETTER", "TargetLetterTask", "target_letter_reward"]


@dataclass(frozen=True)
class TargetLetterTask(SyntheticTask):
    """``"say : c"``: the reward is the fraction of completion words equal to the letter ``c``.

    A completion made only of the letter (at least one) is a solution; an empty one scores 0. A random tiny model
    hits the letter about once in 50 words; it learns to repeat the prompt's last word within ~100 RL steps when
    completions are short (4 tokens; see [`recommended_rl_kwargs`]).

    Attributes:
        letters: The letters targets are drawn from.
    """

    name: str = "target_letter"
    max_words: int = 4
    letters: str = "abcdefgh"

    _PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"\bsay\s*:\s*([a-z])\b")

    @property
    def reward_func(self) -> RewardFunc:
        """[`target_letter_reward`]."""
        return target_letter_reward

    def sample_target(self, rng: random.Random) -> str:
        """Draw one of ``letters``."""
        return rng.choice(self.letters)

    def format_prompt(self, target: str) -> str:
        """Return ``"say : <letter>"``."""
        return f"say : {target}"

    def parse_target(self, text: str) -> str:
        """Return the letter of the last ``say : <letter>`` in ``text``."""
        return last_match(self._PATTERN, text, self.name)

    def score(self, target: str, words: Sequence[str]) -> float:
        """Fraction of ``words`` equal to ``target`` (0 without words)."""
        return sum(word == target for word in words) / len(words) if words else 0.0

    def is_solution(self, target: str, words: Sequence[str]) -> bool:
        """At least one word, all equal to ``target``."""
        return bool(words) and all(word == target for word in words)

    def solve(self, target: str, rng: random.Random) -> list[str]:
        """The letter repeated 1 to ``max_words`` times."""
        return [target] * rng.randint(1, self.max_words)


TARGET_LETTER = TargetLetterTask()


def target_letter_reward(
    prompts: Sequence[Prompt], completions: Sequence[Any], target: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """TRL reward function of the ``target_letter`` task: fraction of completion words equal to the letter.

    Args:
        prompts: Plain-text prompts or conversations.
        completions: Completion texts or assistant message lists.
        target: The dataset's ``target`` column (read from the prompts when absent).
        **kwargs: Other columns and TRL extras (``completion_ids``, ``trainer_state``...), ignored.
    """
    return TARGET_LETTER.rewards(prompts, completions, target)
