"""`trl-basics train` killed during a save, then pointed at the half-written checkpoint and at the one before it."""

from __future__ import annotations

import json

from trl_basics import checkpoints
from trl_basics.cli import main

from .conftest import run_forked

FAST = [
    "--max_steps", "3", "--per_device_train_batch_size", "8", "--num_generations", "4",
    "--max_completion_length", "4", "--learning_rate", "3e-3", "--report_to", "none", "--disable_tqdm", "true",
    "--gradient_checkpointing", "false", "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "1",
    "--save_total_limit", "1", "--reward_norm", "running",
]  # fmt: skip


def _main(argv):
    assert main(argv) == 0


def test_cli_refuses_an_incomplete_checkpoint_and_resumes_the_complete_one(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "rloo", "--output_dir", str(out), *FAST]
    assert run_forked(_main, argv, kill_at="checkpoint:saved@2") == -9  # kill -9 in the middle of a save
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]

    capsys.readouterr()
    assert main([*argv, "--resume_from_checkpoint", str(out / "checkpoint-2")]) == 2
    err = capsys.readouterr().err
    assert f"error: Cannot resume from {out / 'checkpoint-2'}: the checkpoint is incomplete: it has no " in err, err
    assert checkpoints.MARKER_FILE in err and f"Options: resume from {out / 'checkpoint-1'}" in err

    assert main([*argv, "--resume_from_checkpoint", str(out / "checkpoint-1")]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
