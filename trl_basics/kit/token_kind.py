"""The ``token_kind`` task: ``"say : digits"`` or ``"say : letters"``; the reward is the share of completion words of
that kind."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from trl_basics.kit.synthetic import DIGITS, LETTERS, Prompt, RewardFunc, SyntheticTask, last_match

__all__ = ["TOKEN_KIND", "TokenKindTask", "token_kind_reward"]


@dataclass(frozen=True)
class TokenKindTask(SyntheticTask):
    """``"say : digits"`` / ``"say : letters"``: the reward is the fraction of completion words of that kind.

    Kinds are single digits ``0``-``9`` and single letters ``a``-``z``; an empty completion scores 0, and one made
    only of the asked kind is a solution. A random tiny model starts near 0.2 (digits) and 0.5 (letters).
    """

    name: str = "token_kind"
    max_words: int = 4

    KINDS: ClassVar[tuple[str, ...]] = ("digits", "letters")
    _PATTERN: ClassVar[re.Pattern[str]] = re.compile(r"\bsay\s*:\s*(digits|letters)\b")

    @property
    def reward_func(self) -> RewardFunc:
        """[`token_kind_reward`]."""
        return token_kind_reward

    @staticmethod
    def is_kind(kind: str, word: str) -> bool:
        """Whether ``word`` is of ``kind`` (``"digits"``: one digit, ``"letters"``: one letter a-z)."""
        pool = DIGITS if kind == "digits" else LETTERS
        return word in pool

    def sample_target(self, rng: random.Random) -> str:
        """Draw ``"digits"`` or ``"letters"``."""
        return rng.choice(self.KINDS)

    def format_prompt(self, target: str) -> str:
        """Return ``"say : digits"`` or ``"say : letters"``."""
        return f"say : {target}"

    def parse_target(self, text: str) -> str:
        """Return the kind of the last ``say : digits|letters`` in ``text``."""
        return last_match(self._PATTERN, text, self.name)

    def score(self, target: str, words: Sequence[str]) -> float:
        """Fraction of ``words`` of kind ``target`` (0 without words)."""
        return sum(self.is_kind(target, word) for word in words) / len(words) if words else 0.0

    def is_solution(self, target: str, words: Sequence[str]) -> bool:
        """At least one word, all of kind ``target``."""
        return bool(words) and all(self.is_kind(target, word) for word in words)

    def solve(self, target: str, rng: random.Random) -> list[str]:
        """1 to ``max_words`` random words of kind ``target``."""
        pool = DIGITS if target == "digits" else LETTERS
        return [rng.choice(pool) for _ in range(rng.randint(1, self.max_words))]


TOKEN_KIND = TokenKindTask()


def token_kind_reward(
    prompts: Sequence[Prompt], completions: Sequence[Any], target: Sequence[str] | None = None, **kwargs: Any
) -> list[float]:
    """TRL reward function of the ``token_kind`` task: fraction of completion words of the asked kind.

    Args:
        prompts: Plain-text prompts or conversations.
        completions: Completion texts or assistant message lists.
        target: The dataset's ``target`` column (read from the prompts when absent).
        **kwargs: Other columns and TRL extras, ignored.
    """
    return TOKEN_KIND.rewards(prompts, completions, target)
