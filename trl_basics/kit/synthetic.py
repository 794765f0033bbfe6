"""The base of the kit's synthetic tasks: words as the kit tokenizer splits them, prompt and completion texts, and
`SyntheticTask`, a prompt generator plus a verifiable reward with dataset builders for RL, SFT and preferences.

The tasks themselves are in `target_letter.py`, `token_kind.py` and `exact_length.py`; `tasks.py` lists them.
"""

from __future__ import annotations

import random
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from trl_basics.kit.tokenizer import SPECIAL_TOKENS

__all__ = [
    "DIGITS",
    "FILLER_WORDS",
    "LETTERS",
    "PUNCTUATION",
    "Prompt",
    "RewardFunc",
    "SyntheticTask",
    "completion_text",
    "last_match",
    "prompt_text",
    "split_words",
]

RewardFunc = Callable[..., list[float]]
"""TRL's reward-function contract: ``f(prompts, completions, **kwargs) -> list[float]``."""

Prompt = str | Sequence[Mapping[str, Any]]
"""A plain-text prompt or a conversation (a list of ``{"role": ..., "content": ...}`` messages)."""

LETTERS: tuple[str, ...] = tuple(string.ascii_lowercase)
DIGITS: tuple[str, ...] = tuple(string.digits)
PUNCTUATION: tuple[str, ...] = (":", ",", ".", "?", "!")
FILLER_WORDS: tuple[str, ...] = LETTERS + DIGITS + PUNCTUATION
"""Words that random (wrong or partial) completions are drawn from; all are in the kit tokenizer's vocabulary."""

# Mirrors the tokenizer's pre-tokenizer: single digits, runs of other word characters, runs of punctuation.
_WORD_PATTERN = re.compile(r"\d|[^\W\d]+|[^\w\s]+")
_SPECIAL_PATTERN = re.compile("|".join(re.escape(token) for token in SPECIAL_TOKENS))


def split_words(text: str) -> list[str]:
    """Split ``text`` into lower-cased words the way the kit tokenizer pre-tokenizes it, dropping special tokens.

    Example: ``split_words("C,c 12<eos>")`` is ``["c", ",", "c", "1", "2"]``.
    """
    return _WORD_PATTERN.findall(_SPECIAL_PATTERN.sub(" ", text).lower())


def prompt_text(prompt: Prompt) -> str:
    """Return the text a task reads its target from: the prompt itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    raise ValueError(f"Conversational prompt without a user message: {prompt!r}")


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """Return a completion's text: the string itself, or the content of its last message (conversational)."""
    if isinstance(completion, str):
        return completion
    if not completion:
        return ""
    return str(completion[-1].get("content", ""))


@dataclass(frozen=True)
class SyntheticTask(ABC):
    """A prompt generator plus a verifiable reward, with dataset builders for RL, SFT and preference training.

    Subclasses define how a target is drawn, written into a prompt and read back, how completion words are scored
    (in ``[0, 1]``, 1 for a solution) and what counts as a success, plus one solution sampler.

    Attributes:
        name: Identifier used by [`get_task`].
        max_words: Longest completion (in words) the task's solutions and sampled completions use.
    """

    name: str
    max_words: int

    # ----------------------------------------------------------------------------------------------- task definition
    @property
    @abstractmethod
    def reward_func(self) -> RewardFunc:
        """The task's reward function (a module-level function, so TRL logs it under a readable name)."""

    @abstractmethod
    def sample_target(self, rng: random.Random) -> Any:
        """Draw the hidden target of one example."""

    @abstractmethod
    def format_prompt(self, target: Any) -> str:
        """Write the plain-text prompt that asks for ``target``."""

    @abstractmethod
    def parse_target(self, text: str) -> Any:
        """Read the target back from a prompt's text (the last request in it); raise `ValueError` if absent."""

    @abstractmethod
    def score(self, target: Any, words: Sequence[str]) -> float:
        """Reward in ``[0, 1]`` of a completion split into ``words`` (see [`split_words`])."""

    @abstractmethod
    def is_solution(self, target: Any, words: Sequence[str]) -> bool:
        """Whether the completion's ``words`` solve the example."""

    @abstractmethod
    def solve(self, target: Any, rng: random.Random) -> list[str]:
        """Sample the words of a correct completion."""

    # -------------------------------------------------------------------------------------------------- scoring API
    def reward(self, prompt: Prompt, completion: str | Sequence[Mapping[str, Any]], target: Any = None) -> float:
        """Reward of one completion; ``target`` defaults to the one written in ``prompt``."""
        if target is None:
            target = self.parse_target(prompt_text(prompt))
        return float(self.score(target, split_words(completion_text(completion))))

    def rewards(
        self, prompts: Sequence[Prompt], completions: Sequence[Any], targets: Sequence[Any] | None = None
    ) -> list[float]:
        """Rewards of a batch (what the TRL reward function returns)."""
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
        if targets is None:
            targets = [None] * len(prompts)
        elif len(targets) != len(prompts):
            raise ValueError(f"Got {len(prompts)} prompts but {len(targets)} targets.")
        return [
            self.reward(prompt, completion, target)
            for prompt, completion, target in zip(prompts, completions, targets, strict=True)
        ]

    def success(self, prompt: Prompt, completion: str | Sequence[Mapping[str, Any]]) -> bool:
        """Whether ``completion`` solves the example asked for in ``prompt``."""
        target = self.parse_target(prompt_text(prompt))
        return bool(self.is_solution(target, split_words(completion_text(completion))))

    def success_rate(self, prompts: Sequence[Prompt], completions: Sequence[Any]) -> float:
        """Fraction of ``completions`` that solve their prompts (0 for an empty batch)."""
        if len(prompts) != len(completions):
            raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions.")
        if not prompts:
            return 0.0
        return sum(self.success(p, c) for p, c in zip(prompts, completions, strict=True)) / len(prompts)

    # ---------------------------------------------------------------------------------------------------- samplers
    def random_words(self, rng: random.Random) -> list[str]:
        """Sample 1 to ``max_words`` words uniformly from [`FILLER_WORDS`] (usually a wrong completion)."""
        return [rng.choice(FILLER_WORDS) for _ in range(rng.randint(1, self.max_words))]

    def perturb(self, words: Sequence[str], rng: random.Random) -> list[str]:
        """Replace, delete or insert one random word (usually turns a solution into a partial one)."""
        out = list(words)
        edit = rng.choice(("replace", "delete", "insert")) if out else "insert"
        if edit == "replace":
            out[rng.randrange(len(out))] = rng.choice(FILLER_WORDS)
        elif edit == "delete":
            del out[rng.randrange(len(out))]
        else:
            out.insert(rng.randint(0, len(out)), rng.choice(FILLER_WORDS))
        return out

    def sample_completion_words(self, target: Any, rng: random.Random) -> list[str]:
        """Sample a completion of mixed quality: a solution, a perturbed solution or random words (1/3 each)."""
        kind = rng.randrange(3)
        if kind == 0:
            return self.solve(target, rng)
        if kind == 1:
            return self.perturb(self.solve(target, rng), rng)
        return self.random_words(rng)

    # ---------------------------------------------------------------------------------------------------- datasets
    @staticmethod
    def _as_prompt(text: str, conversational: bool) -> Prompt:
        """Wrap ``text`` as a one-message conversation, or end the plain prompt with a space."""
        # A plain prompt ends with a space: TRL scores RL completions with a reward model on `prompt + completion`,
        # and a decoded completion has no leading space, so without it "letters" + "a b" would read "lettersa b".
        # The tokenizer drops the trailing space, so generation sees the same token ids.
        return [{"role": "user", "content": text}] if conversational else text + " "

    @staticmethod
    def _as_completion(words: Sequence[str], conversational: bool) -> str | list[dict[str, str]]:
        """Join ``words`` into a plain completion (with a leading space) or an assistant message."""
        text = " ".join(words)
        # A plain completion is appended to the prompt as is (TRL's SFT/DPO/reward trainers), so it needs the space.
        return [{"role": "assistant", "content": text}] if conversational else " " + text

    def make_dataset(self, n: int, seed: int = 0, conversational: bool = False) -> datasets.Dataset:
        """Prompt-only RL dataset: columns ``prompt`` (text, or a one-message conversation) and ``target``.

        The same ``(n, seed)`` always gives the same rows. TRL passes ``target`` to the reward function.
        """
        rng = random.Random(seed)
        targets = [self.sample_target(rng) for _ in range(n)]
        prompts = [self._as_prompt(self.format_prompt(t), conversational) for t in targets]
        return datasets.Dataset.from_dict({"prompt": prompts, "target": targets})

    def make_sft_dataset(self, n: int, seed: int = 0, conversational: bool = False) -> datasets.Dataset:
        """Prompt-completion dataset of correct answers (columns ``prompt`` and ``completion``).

        Plain completions start with a space so that ``prompt + completion`` tokenizes as prompt then completion.
        """
        rng = random.Random(seed)
        prompts, completions = [], []
        for _ in range(n):
            target = self.sample_target(rng)
            prompts.append(self._as_prompt(self.format_prompt(target), conversational))
            completions.append(self._as_completion(self.solve(target, rng), conversational))
        return datasets.Dataset.from_dict({"prompt": prompts, "completion": completions})

    def make_preference_dataset(self, n: int, seed: int = 0, conversational: bool = False) -> datasets.Dataset:
        """Preference dataset (columns ``prompt``, ``chosen``, ``rejected``) ranked by the task's reward.

        Both answers are sampled by [`sample_completion_words`] (solutions, near misses and random words), redrawn
        until their rewards differ; ``chosen`` has the strictly higher reward.
        """
        rng = random.Random(seed)
        prompts, chosen, rejected = [], [], []
        for _ in range(n):
            target = self.sample_target(rng)
            first, second = self._distinct_pair(target, rng)
            prompts.append(self._as_prompt(self.format_prompt(target), conversational))
            chosen.append(self._as_completion(first, conversational))
            rejected.append(self._as_completion(second, conversational))
        return datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})

    def _distinct_pair(self, target: Any, rng: random.Random, max_tries: int = 1000) -> tuple[list[str], list[str]]:
        """Two sampled completions with different rewards, the better one first."""
        for _ in range(max_tries):
            a, b = self.sample_completion_words(target, rng), self.sample_completion_words(target, rng)
            score_a, score_b = self.score(target, a), self.score(target, b)
            if score_a != score_b:
                return (a, b) if score_a > score_b else (b, a)
        raise RuntimeError(f"Task {self.name!r}: no two completions with different rewards in {max_tries} draws.")


def last_match(pattern: re.Pattern[str], text: str, task: str) -> str:
    """Return the first group of the last match of ``pattern`` in ``text`` (lower-cased), or a `ValueError`."""
    matches = pattern.findall(text.lower())
    if not matches:
        raise ValueError(f"Task {task!r} cannot find its target in prompt {text!r} (pattern {pattern.pattern!r}).")
    return matches[-1]
