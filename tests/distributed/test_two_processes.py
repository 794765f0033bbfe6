"""Global statistics are global: the pipeline under `accelerate launch --num_processes 2` (CPU, gloo) gives the same
advantages, running state and metrics as one process on the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .pipeline_worker import CONFIGS

WORKER = Path(__file__).with_name("pipeline_worker.py")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(num_processes: int, *script_and_args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch` with N CPU processes (gloo): the multi-process launcher with ACCELERATE_USE_CPU=1."""
    launcher = ["--multi_gpu", "--num_processes", str(num_processes)] if num_processes > 1 else ["--cpu"]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launcher,
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), *script_and_args,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def launch(num_processes: int, out_dir: Path) -> list[dict]:
    out = out_dir / f"{num_processes}-RANK.pt"
    result = accelerate_launch(num_processes, str(WORKER), str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(str(out).replace("RANK", str(rank)), weights_only=True) for rank in range(num_processes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch with one process and one with two; each runs every config."""
    out_dir = tmp_path_factory.mktemp("pipeline")
    return launch(1, out_dir), launch(2, out_dir)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_two_processes_match_one(config, runs):
    (single,), (first, second) = runs
    single, first, second = single[config], first[config], second[config]
    for round_index, expected in enumerate(single["advantages"]):
        combined = torch.cat([first["advantages"][round_index], second["advantages"][round_index]])
        torch.testing.assert_close(combined, expected)
    assert first["state"] == second["state"]
    for key, value in single["state"].items():
        assert first["state"][key].keys() == value.keys()
        for field, number in _flatten(value):
            actual = _lookup(first["state"][key], field)
            assert actual == (number if number is None else pytest.approx(number, rel=1e-9)), (key, field)
    assert first["metrics"].keys() == single["metrics"].keys()
    for name, value in single["metrics"].items():
        assert first["metrics"][name] == pytest.approx(value, rel=1e-6), name
        assert second["metrics"][name] == pytest.approx(value, rel=1e-6), name


def _flatten(state: dict, prefix: tuple = ()):
    for key, value in state.items():
        if isinstance(value, dict):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _lookup(state: dict, path: tuple):
    for key in path:
        state = state[key]
    return state
