"""TRL config settings under which the kit's tiny model learns each kit task on a CPU.

[`recommended_rl_kwargs`] returns keyword arguments valid for both `trl.RLOOConfig` and `trl.GRPOConfig` (add an
``output_dir``). They were measured on 2 CPU cores with the model of [`save_tiny_model`] (defaults, seed 0): see
``MEASURED`` in each task's notes below and the kit's tests.

What matters, in order: a large batch of completions per step (64 = 16 prompts x 4 generations; with 8 or 16 the
sparse ``target_letter`` reward drowns in sampling noise), a large constant learning rate (3e-3; tiny random models
barely move at the usual 1e-6), short completions (``max_completion_length`` 4 for the one-letter tasks), and tied
word embeddings in the model (the default of [`build_tiny_model`]).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from trl_basics.kit.tasks import TASKS, get_task

__all__ = ["CPU_RL_KWARGS", "TASK_RL_KWARGS", "recommended_rl_kwargs"]

CPU_RL_KWARGS: Mapping[str, Any] = MappingProxyType(
    {
        # CPU, full precision, no activation checkpointing (TRL defaults are bf16 and checkpointing on).
        "use_cpu": True,
        "bf16": False,
        "gradient_checkpointing": False,
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        # Optimisation.
        "learning_rate": 3e-3,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 64,
        "num_generations": 4,
        # Sampling and the KL penalty (beta != 0 makes TRL reload the reference model from the model's path).
        "temperature": 1.0,
        "beta": 0.05,
    }
)
"""Settings shared by every task."""

TASK_RL_KWARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "target_letter": MappingProxyType({"max_completion_length": 4, "max_steps": 150}),
        "token_kind": MappingProxyType({"max_completion_length": 4, "max_steps": 100}),
        "exact_length": MappingProxyType({"max_completion_length": 8, "max_steps": 250}),
    }
)
"""Per-task settings on top of [`CPU_RL_KWARGS`]."""

if set(TASK_RL_KWARGS) != set(TASKS):  # pragma: no cover - guards edits to the two tables
    raise RuntimeError("TASK_RL_KWARGS must cover exactly the kit's tasks.")


def recommended_rl_kwargs(task_name: str) -> dict[str, Any]:
    """Return ``RLOOConfig``/``GRPOConfig`` keyword arguments that make ``task_name`` learnable on CPU.

    The result is a new dict (edit it freely); it has no ``output_dir``. Use it as
    ``RLOOConfig(output_dir=..., **recommended_rl_kwargs("target_letter"))``.

    Args:
        task_name: A name from [`TASKS`].

    Returns:
        The keyword arguments.

    Raises:
        ValueError: If the task is unknown (the message lists the valid names).
    """
    task = get_task(task_name)
    return {**CPU_RL_KWARGS, **TASK_RL_KWARGS[task.name]}
