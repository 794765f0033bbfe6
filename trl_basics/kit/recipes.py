"""TRL config settings under which the kit's tiny model learns each kit task on a CPU.

[`recommended_rl_kwargs`] returns keyword arguments valid for both `trl.RLOOConfig` and `trl.GRPOConfig` (add an
``output_dir``). What matters, in order: a large batch of completions per step (64 = 16 prompts x 4 generations;
with 16, 8-token completions and untied embeddings, ``target_letter`` stayed below 0.1 for 300 steps), a
large constant learning rate (3e-3; tiny random models barely move at the usual 1e-6), short completions
(``max_completion_length`` 4 for the one-word tasks), and tied word embeddings in the model (the default of
[`build_tiny_model`]). Run with one torch thread ([`limit_torch_threads`]): for a model this small, intra-op
threads only add synchronisation, and on a busy 2-core machine two threads made runs 8-15x slower.

Measured with trl 1.16.0 on 2 shared CPU cores, one torch thread, model of [`save_tiny_model`] (seed 0), trainer
seed 0, plain-text prompts; reward = mean of the first 10 / last 10 logged steps:

====================  =====  ==============================  ==============================
task                  steps  RLOO reward (wall time)         GRPO reward (wall time)
====================  =====  ==============================  ==============================
``target_letter``       150  0.04 -> 0.88 (7-13 s)           0.05 -> 0.99 (9-13 s)
``token_kind``          100  0.47 -> 0.97 (7 s)              0.47 -> 0.99 (8 s)
``exact_length``        400  0.36 -> 0.88 (48 s)             0.37 -> 0.97 (33 s)
====================  =====  ==============================  ==============================

Over model/trainer seeds 0-3 the final rewards ranged 0.80-0.91 (RLOO) and 0.99 (GRPO) on ``target_letter``,
0.85-0.99 on ``token_kind``, and 0.67-0.99 after 250 steps (0.82-0.98 after 400, seeds 0, 2, 3) on
``exact_length``, the slowest to learn: the model has to count before emitting EOS.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

import torch

from trl_basics.kit.tasks import TASKS, get_task

__all__ = ["CPU_RL_KWARGS", "TASK_RL_KWARGS", "TOOL_TASK_RL_KWARGS", "limit_torch_threads", "recommended_rl_kwargs"]

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
        "exact_length": MappingProxyType({"max_completion_length": 8, "max_steps": 400}),
    }
)
"""Per-task settings on top of [`CPU_RL_KWARGS`]."""

TOOL_TASK_RL_KWARGS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # The opening call (about 30 tokens), the tool result (about 25) and the answer.
        "tool_multiply": MappingProxyType({"max_completion_length": 96}),
        # Up to four guesses of about 50 tokens each (call and reply), then the answer.
        "guess_number": MappingProxyType({"max_completion_length": 224}),
    }
)
"""Per-tool-task settings for the byte-level kit model (``kit.tool_tasks.TOOL_TASKS``): room for the whole exchange."""

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


@contextmanager
def limit_torch_threads(num_threads: int = 1) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(num_threads)``, restoring the previous count afterwards.

    Tiny models train faster, and far more predictably on a shared machine, with a single intra-op thread.

    Args:
        num_threads: Intra-op threads to use inside the block (at least 1).
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
