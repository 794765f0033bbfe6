"""Turn command-line strings into models, data sets and reward functions, safely and with clear errors.

Nothing here evaluates a string: reward functions are imported by explicit ``module:function`` name from installed
modules, and data sets are read from local files or loaded by name through ``datasets``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

KIT_PREFIX = "kit:"
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_reward_function(spec: str) -> Callable[..., list[float]]:
    """Import ``package.module:function`` (an installed module; nothing is evaluated)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise ValueError(
            f"reward function {spec!r} must look like 'package.module:function' (an installed module and the name "
            "of a function in it)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"cannot import module {module_name!r} for reward function {spec!r}: {err}. Install the package that "
            "provides it, or check the spelling."
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ValueError(f"{module_name!r} has no function {attribute!r} (from reward function {spec!r})")
    return function


def kit_task(name: str):
    from ..kit.tasks import get_task

    return get_task(name.removeprefix(KIT_PREFIX))


def load_prompts(dataset_name: str, split: str = "train", num_prompts: int = 2048, seed: int = 0):
    """A prompt data set from ``kit:<task>``, a local .jsonl/.json/.parquet/.csv file, a saved dataset folder, or
    a name that ``datasets.load_dataset`` resolves."""
    import datasets

    if dataset_name.startswith(KIT_PREFIX):
        return kit_task(dataset_name).make_dataset(num_prompts, seed=seed)
    path = Path(dataset_name)
    if path.suffix in LOCAL_FORMATS:
        if not path.exists():
            raise ValueError(f"dataset file {dataset_name!r} does not exist. Check the path.")
        dataset = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
    elif path.is_dir() and (path / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(str(path))
    else:
        dataset = datasets.load_dataset(dataset_name, split=split)
    if "prompt" not in dataset.column_names:
        raise ValueError(
            f"dataset {dataset_name!r} has columns {dataset.column_names} but needs a 'prompt' column (plain text or "
            "a list of chat messages). Rename the column that holds the prompts."
        )
    return dataset


def resolve_model(model_name_or_path: str | None, output_dir: str) -> str:
    """A model path for TRL. ``None`` or ``kit:tiny`` builds the kit's tiny model and saves it in ``output_dir``."""
    if model_name_or_path in (None, "", "kit:tiny"):
        from ..kit.model import save_tiny_model

        return str(save_tiny_model(Path(output_dir) / "initial-model"))
    if os.path.isdir(model_name_or_path) and not (Path(model_name_or_path) / "config.json").exists():
        raise ValueError(
            f"model folder {model_name_or_path!r} has no config.json; point --model_name_or_path at a folder written "
            "by save_pretrained"
        )
    return model_name_or_path


def reward_sources(reward_model: str | None, reward_funcs: list[str] | None, dataset_name: str) -> list[Any]:
    """Reward functions for TRL: a reward model path and/or imported functions; a kit data set brings its own."""
    sources: list[Any] = []
    if reward_model:
        if os.path.isdir(reward_model) and not (Path(reward_model) / "config.json").exists():
            raise ValueError(f"reward model folder {reward_model!r} has no config.json (not a saved model)")
        sources.append(reward_model)
    sources += [load_reward_function(spec) for spec in reward_funcs or []]
    if not sources and dataset_name.startswith(KIT_PREFIX):
        sources.append(kit_task(dataset_name).reward_func)
    if not sources:
        raise ValueError(
            "no reward source: pass --reward_model_name_or_path PATH (a sequence-classification model) or "
            "--reward_funcs package.module:function (or use a kit:<task> data set, which brings its own reward)"
        )
    return sources
