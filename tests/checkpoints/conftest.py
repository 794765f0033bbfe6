"""Checkpoint tests: training runs in forked processes (killed with SIGKILL) and helpers to inspect what they left.

Training runs in a child forked from the test process, which has already imported torch, transformers and TRL, so
a run starts in well under a second instead of the ~20 s a fresh interpreter needs on a loaded machine. The child
is a real process: it writes its checkpoints itself and dies by SIGKILL (at a named write point, see
``kill_points.py``, or by the test's own ``os.kill``).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import traceback
from pathlib import Path

import pytest
import torch
from helpers import cpu_kwargs
from safetensors.torch import load_file
from transformers import TrainerCallback

import trl_basics as tb
from trl_basics import checkpoints

from . import kill_points

RLOO_FLAGS = {"beta": 0.0, "kl_coef": 0.05, "kl_target": 0.01, "reward_norm": "running"}
PPO_FLAGS = {"kl_target": 0.05, "kl_horizon": 100}


class Reporter(TrainerCallback):
    """Writes `begin <step>`, `step <n>` and `saved <n>` lines to a pipe, for the parent to time its kills."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def _send(self, text: str) -> None:
        if self.fd is not None:
            os.write(self.fd, f"{text}\n".encode())

    def on_train_begin(self, args, state, control, **kwargs):
        self._send(f"begin {state.global_step}")

    def on_step_end(self, args, state, control, **kwargs):
        self._send(f"step {state.global_step}")

    def on_save(self, args, state, control, **kwargs):
        self._send(f"saved {state.global_step}")


def make_trainer(kind, model_dir, task, dataset, output_dir, max_steps, report_fd=None, keep=1, **overrides):
    """An RLOO (stateful tricks) or PPO-max trainer that saves every step and keeps ``keep`` checkpoints.

    The learning rate is constant, so that step k of a run does not depend on ``max_steps``: every run's
    checkpoint-k can be compared with the reference run's.
    """
    kwargs = cpu_kwargs(
        output_dir,
        max_steps=max_steps,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=keep,
        lr_scheduler_type="constant",
    )
    kwargs.update({name: overrides.pop(name) for name in list(overrides) if name in kwargs})
    if kind == "rloo":
        config = tb.RLOOConfig(**kwargs, **{**RLOO_FLAGS, **overrides})
        cls = tb.RLOOTrainer
    elif kind == "ppo_max":
        config = tb.PPOMaxConfig(**kwargs, **{**PPO_FLAGS, **overrides})
        cls = tb.PPOMaxTrainer
    else:
        raise ValueError(kind)
    return cls(
        model=model_dir,
        reward_funcs=task.reward_func,
        args=config,
        train_dataset=dataset,
        callbacks=[Reporter(report_fd)],
    )


def train(kind, model_dir, task, dataset, output_dir, max_steps, resume=None, report_fd=None, keep=1, **overrides):
    trainer = make_trainer(kind, model_dir, task, dataset, output_dir, max_steps, report_fd, keep, **overrides)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _own_progress_bar_lock() -> None:
    """Give this forked child a tqdm lock of its own.

    tqdm guards progress bars with one multiprocessing lock, shared by a process and every child it forks. A child
    killed while it holds it (in the middle of transformers' "Writing model shards" bar, say) would leave it taken
    for the test process and every later child.
    """
    from tqdm import std

    classes = [std.tqdm]
    while classes:
        cls = classes.pop()
        if "_lock" in cls.__dict__:
            delattr(cls, "_lock")
        classes.extend(cls.__subclasses__())
    if "mp_lock" in std.TqdmDefaultWriteLock.__dict__:
        del std.TqdmDefaultWriteLock.mp_lock
    std.tqdm.set_lock(std.TqdmDefaultWriteLock())


def fork(target, *args, env: dict | None = None, kill_at: str | None = None, **kwargs) -> int:
    """Run ``target`` in a forked child; returns the child's pid. Exit status 0 on return, 1 on an exception.

    With ``kill_at`` (``POINT`` or ``POINT@N``), the child kills itself with SIGKILL the N-th time it reaches that
    write point (see ``kill_points.py``).
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            _own_progress_bar_lock()
            os.environ.update(env or {})
            if kill_at is not None:
                kill_points.install(kill_at)
            target(*args, **kwargs)
            code = 0
        except BaseException:  # noqa: BLE001 (the child reports any failure by its exit code)
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float = 120.0) -> int:
    """The child's exit code (-9 when killed by SIGKILL), killing it if it outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"child {pid} ran longer than {timeout} s")
        time.sleep(0.01)


def run_forked(
    target, *args, env: dict | None = None, kill_at: str | None = None, timeout: float = 120.0, **kwargs
) -> int:
    return wait(fork(target, *args, env=env, kill_at=kill_at, **kwargs), timeout)


def final_state(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The policy weights and the trick state a checkpoint holds."""
    import json

    weights = load_file(str(folder / "model.safetensors"))
    tricks = json.loads((folder / checkpoints.TRICK_STATE_FILE).read_text())["state"]
    return weights, tricks


def assert_same_checkpoint(a: Path, b: Path) -> None:
    weights_a, tricks_a = final_state(a)
    weights_b, tricks_b = final_state(b)
    assert tricks_a == tricks_b
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], rtol=0, atol=0, msg=name)
    critic_a, critic_b = a / "critic" / "model.safetensors", b / "critic" / "model.safetensors"
    assert critic_a.exists() == critic_b.exists()
    if critic_a.exists():
        for name, value in load_file(str(critic_b)).items():
            torch.testing.assert_close(load_file(str(critic_a))[name], value, rtol=0, atol=0, msg=f"critic {name}")
        optimizer_a = torch.load(a / "critic" / "optimizer.pt", weights_only=True)
        optimizer_b = torch.load(b / "critic" / "optimizer.pt", weights_only=True)
        for key, state in optimizer_b["state"].items():
            for field, value in state.items():
                torch.testing.assert_close(optimizer_a["state"][key][field], value, rtol=0, atol=0)


def copy_checkpoint(source: Path, output_dir: Path) -> Path:
    target = output_dir / source.name
    shutil.copytree(source, target)
    return target


REFERENCE_STEPS = 16


@pytest.fixture(scope="session")
def rloo_reference(tmp_path_factory, tiny_model_dir, task, dataset):
    """An uninterrupted RLOO run with a checkpoint at every step, all kept; returns its output folder."""
    out = tmp_path_factory.mktemp("rloo-reference")
    assert run_forked(train, "rloo", tiny_model_dir, task, dataset, out, REFERENCE_STEPS, keep=None) == 0
    return out


@pytest.fixture(scope="session")
def ppo_reference(tmp_path_factory, tiny_model_dir, task, dataset):
    """An uninterrupted 3-step PPO-max run with a checkpoint at every step, all kept."""
    out = tmp_path_factory.mktemp("ppo-reference")
    assert run_forked(train, "ppo_max", tiny_model_dir, task, dataset, out, 3, keep=None) == 0
    return out
