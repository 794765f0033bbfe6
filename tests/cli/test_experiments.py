"""A shortened demo, and `ablate`, end to end: every algorithm's reward rises clearly (the documented threshold)."""

import json

import pytest

from trl_basics.cli import main
from trl_basics.cli.experiments import DEMO_ALGORITHMS, strip_flags
from trl_basics.cli.report import RISE_T_THRESHOLD, reward_rise


def test_reward_rise_statistic():
    flat = [0.5, 0.52, 0.48, 0.5, 0.51, 0.49, 0.5, 0.5, 0.52, 0.48, 0.5, 0.5, 0.49, 0.51, 0.5]
    assert abs(reward_rise(flat)[2]) < RISE_T_THRESHOLD
    rising = [0.1 + 0.05 * step for step in range(15)]
    first, last, t = reward_rise([r + (0.01 if i % 2 else -0.01) for i, r in enumerate(rising)])
    assert first < last and t >= RISE_T_THRESHOLD


def test_strip_flags():
    argv = ["--reward_clip", "0.3", "--whiten_advantages", "true", "--tricks", "a", "b", "--seed", "1"]
    assert strip_flags(argv, {"reward_clip", "tricks"}) == ["--whiten_advantages", "true", "--seed", "1"]


@pytest.mark.slow
def test_shortened_demo_every_reward_rises(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--output_dir", str(out), "--sft_steps", "20", "--reward_model_steps", "60", "--max_steps", "30"]
    assert main(argv) == 0  # the demo exits 1 when some algorithm's reward does not rise clearly
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == set(DEMO_ALGORITHMS)
    for name, run in summary["runs"].items():
        assert run["rise_t"] >= RISE_T_THRESHOLD, (name, run)
        assert run["reward_last"] > run["reward_first"], name
    report = (out / "report.md").read_text()
    for name in DEMO_ALGORITHMS:
        assert f"| {name} |" in report
    for plot in ("reward", "task_reward", "kl", "length", "perplexity"):
        assert (out / f"{plot}.png").stat().st_size > 1000
        assert f"({plot}.png)" in report
    assert (out / "report.html").exists()


@pytest.mark.slow
def test_ablate_switches_each_trick_off(tmp_path):
    out = tmp_path / "ablate"
    argv = ["ablate", "reinforce_pp", "--output_dir", str(out), "--max_steps", "8", "--reward_norm", "running"]
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    for row in ("all tricks", "without reward_norm", "without kl_shaping", "without advantage_whiten"):
        assert f"| {row} |" in report, row
    # The variant's override really reached the run: no reward_norm metric in the run without it.
    history = json.loads((out / "runs" / "without_reward_norm" / "trainer_state.json").read_text())["log_history"]
    assert not any("tricks/reward_norm/running_std" in entry for entry in history)
    history = json.loads((out / "runs" / "all_tricks" / "trainer_state.json").read_text())["log_history"]
    assert any("tricks/reward_norm/running_std" in entry for entry in history)
