"""Building a trl_basics trainer's TRL parent: its constructor arguments by name, and its config coerced to ours."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from .guards import check_dataset, check_reward_sources


def bind_trainer_arguments(parent_init, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The parent constructor's arguments by name, so ``args`` can be replaced whether passed by position or not."""
    bound = inspect.signature(parent_init).bind(None, *args, **kwargs)
    arguments = dict(bound.arguments)
    arguments.pop(next(iter(arguments)))  # `self`
    check_reward_sources(arguments.get("reward_funcs"))
    # Before any model is loaded. Where the prompts come from is the parent's to say (GRPO: an environment's
    # `reset()` or a `rollout_func`; RLOO has neither argument).
    sources = {
        "environment": arguments.get("environment_factory") is not None,
        "rollout_func": arguments.get("rollout_func") is not None,
    }
    check_dataset(arguments.get("train_dataset"), "train_dataset", **sources)
    check_dataset(arguments.get("eval_dataset"), "eval_dataset", **sources)
    return arguments


def model_name(model: Any) -> str:
    if isinstance(model, str):
        return model.rstrip("/").split("/")[-1]
    return getattr(getattr(model, "config", None), "_name_or_path", "model").rstrip("/").split("/")[-1]


def coerce_config(args: Any, config_cls: type, parent_cls: type) -> Any:
    """Turn a plain TRL parent config (e.g. ``trl.GRPOConfig``) into ``config_cls``, keeping what the user set.

    Fields the user left at the parent's default take ``config_cls``'s default, so our presets apply; fields the
    user changed keep their value. Fields derived in ``__post_init__`` are recomputed.
    """
    if isinstance(args, config_cls):
        return args
    if not isinstance(args, parent_cls):
        raise TypeError(f"args must be a {config_cls.__name__} or a {parent_cls.__name__}, got {type(args).__name__}")
    changed = {}
    for f in dataclasses.fields(parent_cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        value = getattr(args, f.name)
        if default is dataclasses.MISSING or value != default:
            changed[f.name] = value
    # Derived from steps_per_generation in the parent's __post_init__; passing both is an error there.
    changed.pop("generation_batch_size", None)
    return config_cls(**changed)
