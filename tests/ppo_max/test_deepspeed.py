"""PPO-max under DeepSpeed ZeRO-2 and ZeRO-3 (the shipped accelerate configs), on CPU.

DeepSpeed's CPU accelerator runs ZeRO-2/3 with gloo, but accelerate maps DeepSpeed only to a device backend (nccl,
xccl, hccl, ...): without a GPU its `PartialState` finds no backend and reports one process, so every rank of a
multi-process launch would train alone. These tests therefore launch ONE process per ZeRO stage: the policy in
accelerate's engine, the critic in its own engine, a checkpoint and a resume. The critic's value losses must equal a
plain single-process run step for step; multi-GPU runs of the same configs wait for a machine that has GPUs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import deepspeed  # noqa: F401  (installed by the dev extra; the test must run, not skip)
import pytest
import torch

from trl_basics import PPOMaxConfig, PPOMaxTrainer

from .deepspeed_worker import CONFIG

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("deepspeed_worker.py")


def launch_deepspeed(stage: int, out_dir: Path) -> dict:
    from distributed.test_two_processes import free_port  # tests/ is on sys.path (rootdir-relative packages)

    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(ROOT / "examples" / "accelerate" / f"deepspeed_zero{stage}.yaml"),
        "--num_processes", "1", "--mixed_precision", "no", "--main_process_port", str(free_port()),
        str(WORKER), str(out_dir),
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out_dir / "report.json").read_text())


@pytest.fixture(scope="module")
def plain_value_losses(tmp_path_factory, tiny_model_dir, task):
    config = PPOMaxConfig(output_dir=str(tmp_path_factory.mktemp("plain")), **{**CONFIG, "save_strategy": "no"})
    config.use_cpu = True
    trainer = PPOMaxTrainer(
        model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )
    trainer.train()
    return [entry["value/loss"] for entry in trainer.state.log_history if "value/loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stage_trains_the_critic_like_a_plain_run_and_resumes(stage, tmp_path, plain_value_losses):
    report = launch_deepspeed(stage, tmp_path)
    assert report["distributed_type"] == "DistributedType.DEEPSPEED" and report["zero_stage"] == stage
    assert report["critic_moved"] > 0
    assert report["value_losses"] == pytest.approx(plain_value_losses, rel=1e-5)
    assert report["resume_max_abs_diff"] == 0.0
    assert torch.__version__  # the plain run above used the same torch
