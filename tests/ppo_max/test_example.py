"""The example script runs as documented (two steps) and saves the policy and the critic."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ppo_max.py"


@pytest.mark.slow
def test_example_runs_and_saves_the_critic(tmp_path):
    command = [sys.executable, str(EXAMPLE), "--output_dir", str(tmp_path), "--max_steps", "2", "--num_prompts", "128"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mean reward: first" in result.stdout
    assert (tmp_path / "critic" / "config.json").exists() and (tmp_path / "model.safetensors").exists()
