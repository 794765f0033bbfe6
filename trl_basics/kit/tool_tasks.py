"""Verifiable tasks that need a tool: one with a plain Python tool, one with a stateful environment.

Both use conversational prompts and the byte-level tokenizer ([`build_byte_tokenizer`]); both are offline and
deterministic (the datasets are drawn from a seeded generator).

- ``tool_multiply`` (``MULTIPLY_TOOL_TASK``): "What is 417 times 238?". A tiny model cannot multiply two 3-digit
  numbers, but it can call the [`multiply`] tool and copy the result. Reward 1 when the last assistant message is
  exactly the product, else 0. Pass ``tools=task.tools`` to the trainer.
- ``guess_number`` (``GUESS_NUMBER_TASK``): "Guess my number between 1 and 16.". Each rollout gets its own
  [`GuessNumberEnvironment`] (``environment_factory=task.environment_factory``), whose ``guess`` tool answers
  ``higher``, ``lower`` or ``correct`` and keeps the state over turns. The reward reads that state: 1 when the number
  was found, less a small cost per guess.

Each task also gives worked transcripts (``task.transcript(row)``: the conversation a perfect agent would have),
used to learn the tokenizer's merges ([`tool_corpus`]) and, with ``task.direct_transcript(row)`` (an answer given
without the tool), to warm a tiny model up before RL ([`sft_on_demonstrations`]).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from datasets import Dataset

from trl_basics.kit.byte_tokenizer import render_chat

__all__ = [
    "GUESS_NUMBER_TASK",
    "MULTIPLY_TOOL_TASK",
    "TOOL_TASKS",
    "GuessNumberEnvironment",
    "GuessNumberTask",
    "MultiplyToolTask",
    "ToolTask",
    "guess_number_reward",
    "last_assistant_text",
    "multiply",
    "multiply_reward",
    "tool_call_reward",
    "tool_corpus",
]


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.

    Returns:
        The product a * b.
    """
    return int(a) * int(b)


def _call(name: str, **arguments: int) -> dict:
    """An assistant message that calls tool ``name`` with ``arguments``."""
    return {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": name, "arguments": arguments}}],
    }


def last_assistant_text(completion) -> str:
    """The text of the last assistant message of a conversational completion (or the completion itself, if text)."""
    if isinstance(completion, str):
        return completion.strip()
    for message in reversed(completion):
        if message.get("role") == "assistant":
            content = message.get("content") or ""
            return content.strip() if isinstance(content, str) else ""
    return ""


def tool_call_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the conversational completion holds a tool result (a tool was called), else 0.0: a shaping reward."""
    return [float(any(m.get("role") == "tool" for m in c)) if not isinstance(c, str) else 0.0 for c in completions]


def multiply_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the completion's last assistant message is exactly ``answer`` (the product), else 0.0."""
    return [float(last_assistant_text(c) == str(a)) for c, a in zip(completions, answer, strict=True)]


class GuessNumberEnvironment:
    """Guess-the-number: the secret comes from the dataset row, the state (guesses, found) lives across turns.

    TRL builds one instance per rollout, calls ``reset(**row)`` before generation and exposes every public method
    other than ``reset`` as a tool.
    """

    def __init__(self) -> None:
        self.secret = 0
        self.guesses: list[int] = []
        self.found = False

    def reset(self, secret: int = 0, **kwargs) -> None:
        """Start a new game with ``secret`` (a dataset column); nothing is added to the prompt."""
        self.secret = int(secret)
        self.guesses = []
        self.found = False

    def guess(self, number: int) -> str:
        """Guess the secret number.

        Args:
            number: The guess.

        Returns:
            "correct" when the guess is the secret, "higher" when the secret is larger, "lower" when it is smaller.
        """
        number = int(number)
        self.guesses.append(number)
        if number == self.secret:
            self.found = True
            return "correct"
        return "higher" if self.secret > number else "lower"


def guess_number_reward(environments, guess_cost: float = 0.1, **kwargs) -> list[float]:
    """1.0 when the environment's number was found, less ``guess_cost`` per guess beyond the first; 0.0 otherwise."""
    return [max(0.0, 1.0 - guess_cost * (len(env.guesses) - 1)) if env.found else 0.0 for env in environments]


@dataclass(frozen=True)
class ToolTask:
    """A tool-use task: its dataset, reward function, tools or environment, and worked transcripts."""

    name: str
    reward_func: Callable[..., list[float]]
    tools: tuple[Callable, ...] = ()
    environment_factory: Callable[[], object] | None = None
    trainer_kwargs: dict = field(default_factory=dict)

    def make_row(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def transcript(self, row: dict) -> list[dict]:
        """The conversation of a perfect agent on ``row``: prompt, tool calls, tool results and the final answer."""
        raise NotImplementedError

    def direct_transcript(self, row: dict) -> list[dict]:
        """The conversation of an agent that answers ``row`` at once, without a tool (used to warm up a model)."""
        raise NotImplementedError

    def first_call(self, prompt: list[dict]) -> dict:
        """The assistant message a perfect agent opens with on ``prompt`` (a tool call), read from the prompt text."""
        raise NotImplementedError

    def schema_tools(self) -> list[Callable]:
        """The callables whose schemas the prompt shows: the tools, or the environment's public methods."""
        if self.environment_factory is None:
            return list(self.tools)
        env = self.environment_factory()
        names = sorted(n for n in dir(type(env)) if not n.startswith("_") and n not in ("reset", "get_reward"))
        return list(self.tools) + [getattr(env, n) for n in names if callable(getattr(env, n))]

    def make_dataset(self, n: int, seed: int = 0) -> Dataset:
        """``n`` rows drawn with a generator seeded by ``seed``: a conversational ``prompt`` and the task's columns."""
        rng = random.Random(seed)
        rows = [self.make_row(rng) for _ in range(n)]
        return Dataset.from_list(rows)

    def trainer_inputs(self) -> dict:
        """The keyword arguments a TRL GRPO-based trainer needs for this task (reward, tools or environment)."""
        kwargs: dict = {"reward_funcs": self.reward_func}
        if self.tools:
            kwargs["tools"] = list(self.tools)
        if self.environment_factory is not None:
            kwargs["environment_factory"] = self.environment_factory
        return kwargs


@dataclass(frozen=True)
class MultiplyToolTask(ToolTask):
    low: int = 100
    high: int = 999

    def make_row(self, rng: random.Random) -> dict:
        a, b = rng.randint(self.low, self.high), rng.randint(self.low, self.high)
        prompt = [{"role": "user", "content": f"What is {a} times {b}?"}]
        return {"prompt": prompt, "a": a, "b": b, "answer": str(a * b)}

    def direct_transcript(self, row: dict) -> list[dict]:
        """The product stated at once: right, but out of a tiny model's reach without the tool."""
        return [*row["prompt"], {"role": "assistant", "content": row["answer"]}]

    def first_call(self, prompt: list[dict]) -> dict:
        a, b = (int(x) for x in re.findall(r"\d+", prompt[-1]["content"])[:2])
        return _call("multiply", a=a, b=b)

    def transcript(self, row: dict) -> list[dict]:
        a, b = row["a"], row["b"]
        return [
            *row["prompt"],
            _call("multiply", a=a, b=b),
            {"role": "tool", "name": "multiply", "content": str(multiply(a, b))},
            {"role": "assistant", "content": str(multiply(a, b))},
        ]


@dataclass(frozen=True)
class GuessNumberTask(ToolTask):
    high: int = 16

    def make_row(self, rng: random.Random) -> dict:
        prompt = [{"role": "user", "content": f"Guess my number between 1 and {self.high}."}]
        return {"prompt": prompt, "secret": rng.randint(1, self.high)}

    def direct_transcript(self, row: dict) -> list[dict]:
        """The number stated without a guess: the environment never hears it, so the reward is 0."""
        return [*row["prompt"], {"role": "assistant", "content": str(row["secret"])}]

    def first_call(self, prompt: list[dict]) -> dict:
        return _call("guess", number=(1 + self.high) // 2)

    def transcript(self, row: dict) -> list[dict]:
        """Binary search: guess the middle, follow the hints, then say the number."""
        env = GuessNumberEnvironment()
        env.reset(secret=row["secret"])
        messages = list(row["prompt"])
        low, high = 1, self.high
        while True:
            number = (low + high) // 2
            reply = env.guess(number)
            messages += [_call("guess", number=number), {"role": "tool", "name": "guess", "content": reply}]
            if reply == "correct":
                break
            low, high = (number + 1, high) if reply == "higher" else (low, number - 1)
        messages.append({"role": "assistant", "content": str(number)})
        return messages


MULTIPLY_TOOL_TASK = MultiplyToolTask(name="tool_multiply", reward_func=multiply_reward, tools=(multiply,))
GUESS_NUMBER_TASK = GuessNumberTask(
    name="guess_number", reward_func=guess_number_reward, environment_factory=GuessNumberEnvironment
)
TOOL_TASKS: Mapping[str, ToolTask] = MappingProxyType(
    {task.name: task for task in (MULTIPLY_TOOL_TASK, GUESS_NUMBER_TASK)}
)
"""The kit's tool tasks by name (read-only)."""


def tool_corpus(tasks: Sequence[ToolTask] = (MULTIPLY_TOOL_TASK, GUESS_NUMBER_TASK), n: int = 8) -> list[str]:
    """Rendered transcripts of ``tasks`` (``n`` each, seed 0): a merge-learning corpus for the byte tokenizer."""
    texts = []
    for task in tasks:
        for row in task.make_dataset(n, seed=0):
            texts.append(render_chat(task.transcript(row), task.schema_tools()))
    return texts
