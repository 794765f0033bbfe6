"""The argument parser of `trl-basics train ALGO`: TRL's ``TrlParser`` over the data-set and reward flags, the
algorithm's config class and TRL's ``ModelConfig``.

Building it imports torch, TRL and transformers (about 10 s), so `flags.py` answers ``--help`` and flag errors from
a stored description of these parsers; this module and the algorithm table are what that description depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from .errors import lookup_algorithm


@cache
def script_arguments_class() -> type:
    from trl import DatasetMixtureConfig

    @dataclass
    class TrainScriptArguments(DatasetMixtureConfig):
        """What to train on (TRL's dataset flags, and TRL's ``datasets:`` mixtures in a YAML file), and the rewards.

        Model options come from TRL's ``ModelConfig``, training options from the algorithm's config."""

        dataset_name: str = field(
            default="kit:token_kind",
            metadata={
                "help": "Prompts: 'kit:<task>' (built-in synthetic or tool task with its own verifiable reward), a local "
                ".jsonl/.json/.parquet/.csv file or saved dataset folder with a 'prompt' column, or a name for "
                "datasets.load_dataset. Ignored when a YAML file lists `datasets:` (a mixture, as in TRL)."
            },
        )
        dataset_config: str | None = field(
            default=None, metadata={"help": "Configuration name of a named data set (`name` of load_dataset)."}
        )
        dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
        dataset_test_split: str = field(
            default="test", metadata={"help": "Split to evaluate on when --eval_strategy is not 'no'."}
        )
        num_prompts: int = field(default=4096, metadata={"help": "Prompts to generate for a kit:<task> data set."})
        reward_model_name_or_path: str | None = field(
            default=None, metadata={"help": "A saved sequence-classification reward model (folder or model id)."}
        )
        reward_funcs: list[str] | None = field(
            default=None,
            metadata={
                "help": "Reward functions: TRL's by name (accuracy_reward, reasoning_accuracy_reward, "
                "think_format_reward, get_soft_overlong_punishment) or 'package.module:function' (installed, on "
                "PYTHONPATH, or in the working directory; file paths are refused; nothing is eval'd)."
            },
        )
        tools: list[str] | None = field(
            default=None,
            metadata={
                "help": "Tools for TRL's multi-turn tool loop (GRPO-based trainers): typed functions with docstrings "
                "named 'package.module:function', found as reward functions are. A kit:tool_* data set brings its own."
            },
        )
        environment_factory: str | None = field(
            default=None,
            metadata={
                "help": "A class (or function) named 'package.module:name' that TRL calls once per rollout; the "
                "object's public methods are the tools and its state lasts over the turns (GRPO-based trainers)."
            },
        )

    return TrainScriptArguments


def __getattr__(name: str):
    if name == "TrainScriptArguments":
        return script_arguments_class()
    raise AttributeError(name)


def make_parser(algorithm_name: str, prog: str | None = None, machine: bool = True):
    from trl import ModelConfig, TrlParser

    algorithm = lookup_algorithm(algorithm_name)
    parser = TrlParser(
        (script_arguments_class(), algorithm.config_class(), ModelConfig),
        prog=prog or f"trl-basics train {algorithm_name}",
        description=algorithm.summary
        + " Without a GPU, use_cpu defaults to true and bf16 to false. --resume_from_checkpoint latest (or true) "
        "resumes from the newest complete checkpoint in --output_dir.",
        allow_abbrev=False,
    )
    parser.set_defaults(
        output_dir=f"trl-basics-output/{algorithm_name}",
        **(machine_defaults() if machine else {}),
        **algorithm.defaults,
    )
    return parser


def machine_defaults() -> dict:
    """Without a GPU, default to the CPU in full precision (TRL's bf16 default fails there)."""
    import torch

    if torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()):
        return {}
    return {"use_cpu": True, "bf16": False}


__all__ = ["machine_defaults", "make_parser", "script_arguments_class"]
