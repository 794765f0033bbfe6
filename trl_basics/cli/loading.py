"""Turn command-line strings into models, data sets and reward functions, safely and with clear errors.

Nothing here evaluates a string. Reward functions are TRL's named ones (``trl.rewards``) or imported by explicit
``module:function`` (or TRL's dotted ``module.function``) name, by the rule tools and environment factories follow
too (`imports.import_callable`). Data sets are read from local files or loaded by name through ``datasets``. Every
problem a user can fix raises `UsageError` (a ``ValueError``) naming the input and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UsageError, did_you_mean
from .imports import check_import_spec, import_callable
from .multi_turn import KIT_TOOL_TASKS

KIT_PREFIX = "kit:"
KIT_TASKS = ("target_letter", "token_kind", "exact_length")  # checked against kit.tasks.TASKS by a test
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
TRL_REWARD_NAMES = (  # trl.rewards' functions, usable by name as in TRL's own scripts
    "accuracy_reward",
    "reasoning_accuracy_reward",
    "think_format_reward",
    "get_soft_overlong_punishment",
)


# --- reward functions ------------------------------------------------------------------------------------------------


REWARD_FORMS = (
    "Name one of TRL's reward functions (" + ", ".join(TRL_REWARD_NAMES) + ") or a function in a module as "
    "'package.module:function'"
)


def check_reward_spec(spec: str) -> tuple[str, str] | None:
    """``(module, function)`` for an import spec, None for a TRL reward name; `UsageError` for anything else."""
    if spec in TRL_REWARD_NAMES:
        return None
    if ":" not in spec and "." not in spec and "/" not in spec and "\\" not in spec:
        raise UsageError(f"unknown reward function {spec!r}.{did_you_mean(spec, TRL_REWARD_NAMES)} {REWARD_FORMS}.")
    return check_import_spec(spec, "reward function", REWARD_FORMS)


def load_reward_function(spec: str, max_completion_length: int | None = None) -> Callable[..., Any]:
    """The reward function named by ``spec``: one of TRL's by name, or imported by the rule of `import_callable`
    (the same for ``trl-basics``, ``python -m trl_basics.cli`` and the runs ``compare``/``ablate``/``demo`` start)."""
    if check_reward_spec(spec) is None:
        return trl_reward_function(spec, max_completion_length)
    return import_callable(spec, "reward function", forms=REWARD_FORMS)


def trl_reward_function(name: str, max_completion_length: int | None = None) -> Callable[..., Any]:
    """One of TRL's named reward functions. ``get_soft_overlong_punishment`` is a factory: as in TRL's scripts it
    punishes the last quarter before the cap, here the run's ``max_completion_length`` (TRL's scripts fix 1280)."""
    import trl.rewards

    if name == "get_soft_overlong_punishment":
        cap = max_completion_length or 1280
        return trl.rewards.get_soft_overlong_punishment(max_completion_len=cap, soft_punish_cache=max(1, cap // 4))
    return getattr(trl.rewards, name)


# --- data sets -------------------------------------------------------------------------------------------------------


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_dataset_source(dataset_name: str) -> None:
    """Cheap checks of ``--dataset_name`` (nothing is loaded)."""
    if dataset_name.startswith(KIT_PREFIX):
        task, known = dataset_name.removeprefix(KIT_PREFIX), KIT_TASKS + KIT_TOOL_TASKS
        if task not in known:
            raise UsageError(
                f"unknown kit task {task!r} in --dataset_name {dataset_name}.{did_you_mean(task, known, 'kit:')} "
                f"The kit's tasks: {', '.join(KIT_PREFIX + t for t in known)}."
            )
        return
    path = Path(dataset_name).expanduser()
    if path.suffix in LOCAL_FORMATS or _looks_local(dataset_name):
        if not path.exists():
            raise UsageError(f"dataset file {dataset_name!r} does not exist. Check the path in --dataset_name.")
        if path.is_file() and not path.read_bytes().strip():
            raise UsageError(
                f"dataset file {dataset_name!r} is empty. Add prompts (one JSON object with a 'prompt' per line)."
            )
        if path.is_dir() and _saved_dataset_is_empty(path):
            raise UsageError(
                f"dataset {dataset_name!r} has no rows. Give it prompts, or point --dataset_name at another one."
            )


def _saved_dataset_is_empty(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` with no data files (``datasets`` fails to load it)."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("_data_files") == []


def kit_task(name: str):
    """The kit task ``kit:<name>`` names: a synthetic task or a tool task."""
    from ..kit.tasks import get_task

    if name.removeprefix(KIT_PREFIX) in KIT_TOOL_TASKS:
        from ..kit.tool_tasks import TOOL_TASKS

        return TOOL_TASKS[name.removeprefix(KIT_PREFIX)]
    return get_task(name.removeprefix(KIT_PREFIX))


def load_prompts(dataset_name: str, split: str = "train", num_prompts: int = 2048, seed: int = 0, config=None):
    """A prompt data set from ``kit:<task>``, a local .jsonl/.json/.parquet/.csv file, a saved dataset folder, or
    a name (and ``config``, TRL's ``dataset_config``) that ``datasets.load_dataset`` resolves."""
    check_dataset_source(dataset_name)
    if dataset_name.startswith(KIT_PREFIX):
        return kit_task(dataset_name).make_dataset(num_prompts, seed=seed)
    import datasets

    path = Path(dataset_name).expanduser()
    try:
        if path.suffix in LOCAL_FORMATS:
            dataset = datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        elif path.is_dir() and (path / "dataset_info.json").exists():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = _split(dataset, split, dataset_name)
        else:
            dataset = _split(datasets.load_dataset(dataset_name, name=config), split, dataset_name)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - reported as a problem with the input
        raise UsageError(
            f"cannot load dataset {dataset_name!r}{f' (config {config!r})' if config else ''}: "
            f"{type(err).__name__}: {_first_line(err)}. Check the name, the path and the network."
        ) from None
    return check_prompt_dataset(dataset, dataset_name)


def _split(dataset_dict, split: str, name: str):
    if split not in dataset_dict:
        raise UsageError(
            f"dataset {name!r} has no split {split!r}; it has {', '.join(dataset_dict)}. Set --dataset_train_split."
        )
    return dataset_dict[split]


def check_prompt_dataset(dataset, name: str):
    if len(dataset) == 0:
        raise UsageError(f"dataset {name!r} has no rows. Give it prompts, or point --dataset_name at another one.")
    if "prompt" not in dataset.column_names:
        raise UsageError(
            f"dataset {name!r} has columns {dataset.column_names} but needs a 'prompt' column (plain text or "
            "a list of chat messages). Rename the column that holds the prompts."
        )
    return dataset


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else repr(err))[:300]


# --- models ----------------------------------------------------------------------------------------------------------


def check_local_pretrained(name: str, flag: str) -> dict | None:
    """The ``config.json`` of a local saved model as a dict, None for a Hub id; `UsageError` for a bad path."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"{flag} {name!r} is a file; point it at a folder written by save_pretrained.")
        if not (path / "config.json").exists():
            raise UsageError(f"{flag} {name!r} has no config.json; point it at a folder written by save_pretrained.")
        try:
            return json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise UsageError(f"{flag} {name!r}: config.json cannot be read ({err}).") from None
    if _looks_local(name):
        raise UsageError(f"{flag} {name!r} does not exist. Check the path (a folder written by save_pretrained).")
    return None


def check_pretrained(name: str, flag: str) -> dict:
    """The ``config.json`` of a saved model (local folder or Hub id) as a dict; `UsageError` when it cannot be had."""
    local = check_local_pretrained(name, flag)
    if local is not None:
        return local
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name).to_dict()
    except Exception as err:  # noqa: BLE001 - reported as a problem with the input
        raise UsageError(
            f"{flag} {name!r} is not a local folder and could not be had from the Hugging Face Hub "
            f"({type(err).__name__}: {_first_line(err)}). Check the id and the network, or pass a folder written by "
            "save_pretrained."
        ) from None


def reward_sources(reward_model: str | None, reward_funcs: list[str] | None, dataset_name: str, **kwargs) -> list[Any]:
    """Reward functions for TRL: a reward model path and/or functions; a kit data set brings its own."""
    sources: list[Any] = []
    if reward_model:
        check_pretrained(reward_model, "--reward_model_name_or_path")
        sources.append(reward_model)
    sources += [load_reward_function(spec, **kwargs) for spec in reward_funcs or []]
    if not sources and dataset_name.startswith(KIT_PREFIX):
        sources.append(kit_task(dataset_name).reward_func)
    if not sources:
        raise UsageError(
            "no reward source: pass --reward_model_name_or_path PATH (a sequence-classification model) or "
            "--reward_funcs package.module:function or a TRL reward name such as accuracy_reward (or use a "
            "kit:<task> data set, which brings its own reward)"
        )
    return sources


def resolve_model(model_name_or_path: str | None, output_dir: str, byte_level: bool = False) -> str:
    """A model path for TRL. ``None`` or ``kit:tiny`` builds the kit's tiny model and saves it in ``output_dir``:
    with ``byte_level`` (a tool task) the byte-level one, whose chat template TRL reads tool calls with."""
    if is_kit_model(model_name_or_path):
        if byte_level:
            from ..kit.byte_model import save_tiny_byte_model
            from ..kit.tool_tasks import tool_corpus

            return str(save_tiny_byte_model(Path(output_dir) / "initial-model", corpus=tool_corpus()))
        from ..kit.model import save_tiny_model

        return str(save_tiny_model(Path(output_dir) / "initial-model"))
    return model_name_or_path


def is_kit_model(model_name_or_path: str | None) -> bool:
    return model_name_or_path in (None, "", "kit:tiny")


def context_length(model_config: dict) -> int | None:
    """The longest sequence a model takes, from its config, if it says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(model_config.get(key), int):
            return model_config[key]
    return None
