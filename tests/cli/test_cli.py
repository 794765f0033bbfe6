"""The `trl-basics` command as a person uses it: help, errors, a training run, Ctrl-C/SIGTERM and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from trl_basics.cli import main
from trl_basics.config import TrickArguments

FAST = [
    "--max_steps", "3", "--per_device_train_batch_size", "8", "--num_generations", "4",
    "--max_completion_length", "4", "--learning_rate", "3e-3", "--report_to", "none", "--disable_tqdm", "true",
    "--gradient_checkpointing", "false", "--logging_steps", "1",
]  # fmt: skip


def test_top_level_help_lists_commands_and_algorithms(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("demo", "train", "compare", "ablate", "plugins", "rloo", "reinforce_pp_baseline", "ppo_max", "grpo"):
        assert word in out


def test_train_help_explains_every_trick_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "rloo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    import dataclasses

    for f in dataclasses.fields(TrickArguments):
        assert f"--{f.name}" in out, f.name
    assert "--reward_funcs" in out and "--dataset_name" in out and "--model_name_or_path" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "name an algorithm first"),
        (["train", "ppo"], "unknown algorithm 'ppo'"),
        (["train", "rloo", "--reward_funcs", "no_such_module:fn"], "cannot find module 'no_such_module'"),
        (["train", "rloo", "--reward_funcs", "os.path"], "os.path (from reward function 'os.path') is a module, not a function"),
        (["train", "rloo", "--reward_funcs", "os:"], "is not a valid name"),
        (["train", "rloo", "--kl_coef", "0.1"], "Set beta=0.0"),
        (
            ["train", "rloo", "--dataset_name", "missing.jsonl", "--reward_funcs", "trl_basics.kit.tasks:token_kind_reward"],
            "does not exist",
        ),
        (["train", "rloo", "--dataset_name", "data.jsonl"], "does not exist"),  # before "no reward source"
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_bad_input_names_the_problem(argv, message, capsys, tmp_path):
    assert main([*argv[:1], *argv[1:], *(["--output_dir", str(tmp_path)] if len(argv) > 2 else [])]) == 2
    assert message in capsys.readouterr().err


def test_dataset_without_prompt_column_is_refused(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"question": "say : digits"}\n')
    argv = ["train", "rloo", "--dataset_name", str(data), "--reward_funcs", "trl_basics.kit.tasks:token_kind_reward"]
    assert main([*argv, "--output_dir", str(tmp_path / "out")]) == 2
    assert "needs a 'prompt' column" in capsys.readouterr().err


def test_train_runs_and_saves(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "reinforce_pp", "--output_dir", str(out), *FAST]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("reward" in entry for entry in history) == 3
    assert (out / "config.json").exists()


def test_yaml_config_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("reward_norm: running\nreward_clip: 2.0\nmax_steps: 2\n")
    out = tmp_path / "run"
    assert main(["train", "rloo", "--config", str(config), "--output_dir", str(out), *FAST[2:]]) == 0
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("tricks/reward_norm/running_std" in entry for entry in history) == 2  # max_steps from YAML


def _start_training(out, extra=()):
    command = [sys.executable, "-m", "trl_basics.cli", "train", "reinforce_pp", "--output_dir", str(out), *FAST]
    command[command.index("--max_steps") + 1] = "100000"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command + list(extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    for line in process.stdout:  # wait until training steps are being logged
        if "'loss'" in line or '"loss"' in line:
            break
        assert time.time() < deadline, "training did not start"
    return process


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_leaves_a_checkpoint_that_resumes(signum, tmp_path):
    out = tmp_path / "run"
    process = _start_training(out)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-2000:]
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, output[-2000:]
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert "--resume_from_checkpoint" in output
    # Resume for two more steps from the checkpoint.
    argv = ["train", "reinforce_pp", "--output_dir", str(out), *FAST]
    argv[argv.index("--max_steps") + 1] = str(stopped_at + 2)
    assert main([*argv, "--resume_from_checkpoint", str(checkpoints[-1])]) == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == stopped_at + 2


def test_plugins_command_lists_builtins_and_installed(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "reward_norm" in out and "length_penalty" in out and "trl_basics_length_penalty" in out
