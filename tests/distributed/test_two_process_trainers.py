"""`accelerate launch --num_processes 2` (CPU, gloo): each trainer's advantages equal one process's pipeline on the
same global batch, and every rank ends with the same trick state (running moments, KL coefficient, baseline)."""

import json
from pathlib import Path

import pytest

from .test_two_processes import accelerate_launch
from .trainer_worker import CONFIGS

WORKER = Path(__file__).with_name("trainer_worker.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("trainers")
    result = accelerate_launch(2, str(WORKER), str(out_dir), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out_dir / "report.json").read_text())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_two_processes_agree_with_one(name, report):
    entry = report[name]
    assert entry["world"] == 2 and entry["rounds"] == 3
    assert entry["max_abs_diff"] < 1e-5
    assert entry["same_state_on_every_rank"]
    assert entry["replay_state_matches"]
