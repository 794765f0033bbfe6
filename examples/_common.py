"""Shared bits of the examples: a local tiny model and a verifiable task, so every example runs offline on a CPU.

In your own pipeline these are your model id and dataset; nothing else in the examples is specific to the kit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from trl_basics.kit.model import save_tiny_model
from trl_basics.kit.recipes import recommended_rl_kwargs
from trl_basics.kit.tasks import get_task


@dataclass
class ExampleArguments:
    task: str = field(default="token_kind", metadata={"help": "Kit task: target_letter, token_kind or exact_length."})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A saved model directory. Default: build and save the kit's tiny model."}
    )
    num_prompts: int = field(default=2048, metadata={"help": "Prompts in the synthetic training set."})


def example_defaults(task: str = "token_kind", exclude: tuple[str, ...] = ()) -> dict:
    """TRL config values under which the tiny model learns the task in a few CPU minutes."""
    return {key: value for key, value in recommended_rl_kwargs(task).items() if key not in exclude}


def prepare(example: ExampleArguments, output_dir: str):
    """Return (model path, task, train dataset). Tiny models run fastest on one CPU thread."""
    torch.set_num_threads(1)
    task = get_task(example.task)
    model = example.model_name_or_path or str(save_tiny_model(Path(output_dir) / "initial-model"))
    return model, task, task.make_dataset(example.num_prompts, seed=0)


def report(trainer) -> None:
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    if rewards:
        window = max(1, len(rewards) // 10)
        first, last = sum(rewards[:window]) / window, sum(rewards[-window:]) / window
        print(f"mean reward: first {window} steps {first:.3f} -> last {window} steps {last:.3f}")
