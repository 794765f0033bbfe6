"""PPO-max under `accelerate launch --num_processes 2` (CPU, gloo): GAE advantages and returns equal a single-process
replay on the gathered batch, and policy, critic, critic optimizer and trick state agree on every rank."""

import json
from pathlib import Path

import pytest
from distributed.test_two_processes import accelerate_launch  # tests/ is on sys.path (rootdir-relative packages)

WORKER = Path(__file__).with_name("two_process_worker.py")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ppo-max-ddp")
    result = accelerate_launch(2, str(WORKER), str(out_dir), timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out_dir / "report.json").read_text())


@pytest.mark.slow
def test_advantages_and_returns_match_a_single_process_replay(report):
    assert report["world"] == 2 and report["rounds"] == 3
    assert report["max_abs_diff"] < 1e-5


@pytest.mark.slow
def test_policy_critic_and_state_agree_across_ranks(report):
    assert report["critic_moved"] > 0
    assert report["spread_across_ranks"] == {"policy": 0.0, "critic": 0.0, "critic_optimizer": 0.0}
    assert report["same_state_on_every_rank"] and report["replay_state_matches"]
    assert len(report["value_losses"]) == 3 and len(report["ptx_losses"]) == 3
