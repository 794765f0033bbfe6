"""`trl-basics train`'s tools and environment: ``--tools module:function ...`` and ``--environment_factory
module:callable``, imported by the rule reward functions follow (`imports.import_callable`), and the kit's tool tasks
(``--dataset_name kit:tool_multiply``, ``kit:guess_number``), which bring their reward, their tools or environment
and the byte-level kit model.

Only trainers on TRL's GRPO base run TRL's tool loop; the others refuse these flags before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..algorithms import ALGORITHMS, get_algorithm
from .errors import UsageError

__all__ = [
    "KIT_TOOL_TASKS",
    "check_multi_turn",
    "is_kit_tool_task",
    "load_environment_factory",
    "load_tools",
    "multi_turn_inputs",
]

KIT_TOOL_TASKS = ("tool_multiply", "guess_number")  # checked against kit.tool_tasks.TOOL_TASKS by a test
TOOL_FORMS = "Name a typed function with a docstring (TRL builds the tool's schema from them) as 'package.module:name'"
ENVIRONMENT_FORMS = "Name a class (or a function returning an object) whose public methods are the tools, as " \
    "'package.module:name'"  # fmt: skip


def is_kit_tool_task(dataset_name: str | None) -> bool:
    return bool(dataset_name) and dataset_name in tuple(f"kit:{task}" for task in KIT_TOOL_TASKS)


def _as_list(specs) -> list[str]:
    if not specs:
        return []
    return [specs] if isinstance(specs, str) else [str(spec) for spec in specs]


def check_multi_turn(algorithm_name: str, tools, environment_factory, dataset_name: str | None) -> None:
    """The checks that need no import: the names' form, and that the algorithm has a tool loop."""
    from .imports import check_import_spec

    for spec in _as_list(tools):
        check_import_spec(spec, "tool", TOOL_FORMS)
    if environment_factory:
        check_import_spec(str(environment_factory), "environment factory", ENVIRONMENT_FORMS)
    if not (_as_list(tools) or environment_factory or is_kit_tool_task(dataset_name)):
        return
    if not get_algorithm(algorithm_name).tools:
        able = ", ".join(name for name, algorithm in ALGORITHMS.items() if algorithm.tools)
        given = "--tools" if _as_list(tools) else "--environment_factory" if environment_factory else dataset_name
        raise UsageError(
            f"trl-basics train {algorithm_name} cannot use {given}: its trainer has no tool loop (TRL's RLOOTrainer "
            f"runs none). Use one of {able}; the RLOO and moving-average estimators run there with "
            "--advantage_estimator rloo or moving_average."
        )


def load_tools(specs: Sequence[str]) -> list[Callable[..., Any]]:
    """The tools ``specs`` name, each with a JSON schema TRL can build (a typed function with a docstring)."""
    from transformers.utils import get_json_schema

    from .imports import import_callable

    tools = []
    for spec in _as_list(specs):
        tool = import_callable(spec, "tool", forms=TOOL_FORMS)
        try:
            get_json_schema(tool)
        except Exception as err:  # noqa: BLE001 - reported as a problem with the input
            raise UsageError(
                f"tool {spec!r} has no schema TRL can build ({type(err).__name__}: {err}). Give every argument a "
                "type hint and the function a Google-style docstring with an Args: section."
            ) from None
        tools.append(tool)
    return tools


def load_environment_factory(spec: str | None) -> Callable[[], Any] | None:
    """The environment factory ``spec`` names (TRL calls it once per rollout, without arguments), or None."""
    from .imports import import_callable

    if not spec:
        return None
    return import_callable(spec, "environment factory", "class or function", forms=ENVIRONMENT_FORMS)


def multi_turn_inputs(tools, environment_factory, dataset_name: str | None) -> dict:
    """The trainer's ``tools``/``environment_factory`` keyword arguments: the named ones, else a kit tool task's own."""
    kwargs: dict = {}
    loaded_tools, factory = load_tools(_as_list(tools)), load_environment_factory(environment_factory)
    if not loaded_tools and factory is None and is_kit_tool_task(dataset_name):
        from ..kit.tool_tasks import TOOL_TASKS

        task = TOOL_TASKS[dataset_name.removeprefix("kit:")]
        loaded_tools, factory = list(task.tools), task.environment_factory
    if loaded_tools:
        kwargs["tools"] = loaded_tools
    if factory is not None:
        kwargs["environment_factory"] = factory
    return kwargs
