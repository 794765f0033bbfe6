"""The experiment commands: the report's verdicts and columns, compare/ablate going on past a failed run, flags
checked per algorithm before any run, and (slow) a shortened demo and an ablation end to end."""

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trl_basics.cli import experiments, main
from trl_basics.cli.ablate import strip_flags
from trl_basics.cli.demo import DEMO_ALGORITHMS
from trl_basics.cli.report import (
    RISE_T_THRESHOLD,
    Baseline,
    RunResult,
    assess,
    format_t,
    reward_drop_after_rise,
    reward_rise,
    summary,
    table_rows,
    write_report,
)


def history(rewards, **extra_per_step):
    return [{"step": i + 1, "reward": r, **{k: v[i] for k, v in extra_per_step.items()}} for i, r in enumerate(rewards)]


RISING = [0.1 + 0.05 * step + (0.01 if step % 2 else -0.01) for step in range(20)]


def test_reward_rise_statistic():
    flat = [0.5, 0.52, 0.48, 0.5, 0.51, 0.49, 0.5, 0.5, 0.52, 0.48, 0.5, 0.5, 0.49, 0.51, 0.5]
    assert abs(reward_rise(flat)[2]) < RISE_T_THRESHOLD
    first, last, t = reward_rise(RISING[:15])
    assert first < last and t >= RISE_T_THRESHOLD


def test_t_is_shown_rounded_towards_zero_so_it_never_reads_as_the_threshold():
    assert format_t(2.996) == "2.99" and format_t(3.0) == "3.00" and format_t(-2.996) == "-2.99"
    run = RunResult("r", "rloo", history([0.0, 0.1, 0.0, 0.1, 0.0, 0.1]), 0.0, 1.0)
    cell = table_rows([run])[0]["reward rise: first → last 20% (Welch t)"]
    # means 1/30 and 2/30, variances 1/300 each: t = (1/30) / sqrt(2/900) = 0.7071, shown truncated
    assert cell == "0.03 → 0.07, t = 0.70 (< 3)"


def test_short_runs_say_why_there_is_no_rise_test():
    run = RunResult("short", "rloo", history([0.1, 0.2, 0.3, 0.4, 0.5]), 0.0, 1.0)
    row = table_rows([run])[0]
    assert row["reward rise: first → last 20% (Welch t)"] == "n/a: needs ≥ 6 steps, has 5"
    assert row["verdict"] == "✗ too short to test" and "nan" not in " ".join(row.values())


def test_verdict_needs_a_rise_no_loss_against_sft_and_no_collapse():
    sft = Baseline("SFT", 0.5, 256)
    good = RunResult("good", "rloo", history(RISING), 600.0, 10.0, success_rate=0.9, eval_prompts=256)
    below = RunResult("below", "rloo", history(RISING), 600.0, 10.0, success_rate=0.45, eval_prompts=256)
    alarm = [0.0] * 19 + [1.0]
    alarmed = RunResult("alarmed", "rloo", history(RISING, **{"collapse/alarm": alarm}), 0.0, 1.0, 0.9, eval_prompts=256)
    dropped = RunResult("dropped", "grpo", history(RISING[:-1] + [0.0]), 0.0, 1.0, 0.9, eval_prompts=256)
    flat = RunResult("flat", "rloo", history([0.5, 0.51, 0.49] * 5), 0.0, 1.0, 0.6, eval_prompts=256)
    verdicts = {a.label: assess(a, sft).verdict() for a in (good, below, alarmed, dropped, flat)}
    assert verdicts == {
        "good": "✓", "below": "✗ below SFT", "alarmed": "✗ collapsed", "dropped": "✗ no clear rise, collapsed",
        "flat": "✗ no clear rise",
    }  # fmt: skip
    rows = {row["run"]: row for row in table_rows([good, below, alarmed, dropped], sft)}
    assert rows["SFT"]["task success"] == "50.0%" and rows["SFT"]["verdict"] == "baseline"
    # Δ = 0.9 - 0.5 with s.e. sqrt(0.9·0.1/256 + 0.5·0.5/256) = 0.03644
    assert rows["good"]["task success"] == "90.0% (Δ +40.0 ± 3.6 pp)"
    assert rows["below"]["task success"] == "45.0% (Δ -5.0 ± 4.4 pp)"
    assert rows["alarmed"]["collapsed"] == "yes: alarm at step 20"
    assert rows["dropped"]["collapsed"] == "yes: reward fell back at step 20"
    assert rows["good"]["final reward"] == f"{RISING[-1]:.3f}" and rows["good"]["best step (reward)"] == "20 (1.060)"
    data = summary([good, dropped], sft)["runs"]
    assert math.isclose(data["good"]["task_success_delta_se"], math.sqrt(0.9 * 0.1 / 256 + 0.25 / 256))
    assert (data["good"]["collapsed"], data["good"]["verdict"], data["good"]["sft_task_success"]) == (False, "✓", 0.5)
    assert (data["dropped"]["collapsed"], data["dropped"]["final_reward"]) == (True, 0.0)


def test_report_check_ignores_noise_and_early_dips():
    assert reward_drop_after_rise(RISING) is None
    assert reward_drop_after_rise([0.5, 0.52, 0.48, 0.5, 0.51, 0.49, 0.5, 0.5, 0.52, 0.2]) is None  # no rise before
    assert reward_drop_after_rise(RISING[:-1] + [0.0]) == 19


def test_failed_runs_get_a_row_saying_why(tmp_path):
    ok = RunResult("rloo", "rloo", history(RISING), 600.0, 10.0, success_rate=0.9, eval_prompts=256)
    bad = RunResult("grpo", "grpo", [], 500.0, 3.0, failed="exit code 1: ValueError: boom")
    write_report([ok, bad], tmp_path, "t", command="trl-basics compare")
    report = (tmp_path / "report.md").read_text()
    assert "| grpo | — | — | — | — | — | failed: exit code 1: ValueError: boom |" in report
    assert json.loads((tmp_path / "summary.json").read_text())["runs"]["grpo"]["failed"].startswith("exit code 1")


def fake_child(history_rewards, fail=None):
    """A stand-in for `trl-basics train`: writes trainer_state.json (or fails), in a real child process."""
    code = (
        f"import json, sys; sys.exit({fail!r})" if fail else
        "import json, sys, pathlib; d = pathlib.Path(sys.argv[1]); "
        f"d.joinpath('trainer_state.json').write_text(json.dumps({{'log_history': {history(history_rewards)!r}}}))"
    )  # fmt: skip
    return code


def test_compare_goes_on_past_a_failed_run_and_exits_1(tmp_path, monkeypatch, capsys):
    def command(algorithm, args, run_dir, extra):
        fail = "ValueError: grpo exploded" if algorithm == "grpo" else None
        return [sys.executable, "-c", fake_child(RISING, fail), str(run_dir)]

    monkeypatch.setattr(experiments, "train_command", command)
    monkeypatch.setattr(experiments, "task_success_rate", lambda model_dir, args: 0.75)
    out = tmp_path / "cmp"
    assert main(["compare", "--algorithms", "grpo", "rloo", "--output_dir", str(out)]) == 1
    data = json.loads((out / "summary.json").read_text())["runs"]
    assert data["grpo"]["verdict"] == "failed: exit code 1: ValueError: grpo exploded"
    assert data["rloo"]["final_task_success"] == 0.75 and data["rloo"]["verdict"] == "✓"
    printed = capsys.readouterr().out
    assert "failed: exit code 1: ValueError: grpo exploded" in printed and f"Report: {out / 'report.md'}" in printed


def test_a_flag_one_algorithm_does_not_take_is_refused_before_any_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = ["compare", "--algorithms", "rloo", "grpo", "--reward_norm", "running", "--output_dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "grpo does not take --reward_norm" in err and "leave grpo out" in err
    assert not (out / "runs").exists()


def test_strip_flags():
    argv = ["--reward_clip", "0.3", "--whiten_advantages", "true", "--tricks", "a", "b", "--seed", "1"]
    assert strip_flags(argv, {"reward_clip", "tricks"}) == ["--whiten_advantages", "true", "--seed", "1"]


@pytest.mark.slow
def test_shortened_demo_every_algorithm_passes_its_verdict(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--output_dir", str(out), "--sft_steps", "20", "--reward_model_steps", "60", "--max_steps", "30"]
    assert main(argv) == 0  # the demo exits 1 when some verdict is not ✓
    summary_data = json.loads((out / "summary.json").read_text())
    assert set(summary_data["runs"]) == set(DEMO_ALGORITHMS)
    for name, run in summary_data["runs"].items():
        assert run["verdict"] == "✓" and run["collapsed"] is False, (name, run)
        assert run["final_task_success"] >= run["sft_task_success"] == summary_data["sft_success_rate"], name
        assert run["rss_built_mb"] > 100 and run["peak_rss_mb"] >= run["rss_built_mb"], name
        history_ = json.loads((out / "runs" / name / "trainer_state.json").read_text())["log_history"]
        assert sum("collapse/alarm" in e for e in history_) == 30, name  # every trainer, every step
        assert sum("kl_to_ref/k1_token_mean" in e for e in history_) == 30 or name == "rloo", name
    report = (out / "report.md").read_text()
    assert "| SFT (start of RL, 20 steps) |" in report
    for name in DEMO_ALGORITHMS:
        assert f"| {name} |" in report
    for plot in ("reward", "task_reward", "kl", "length", "perplexity"):
        assert (out / f"{plot}.png").stat().st_size > 1000
        assert f"({plot}.png)" in report
    assert (out / "report.html").exists()
    printed = capsys.readouterr().out
    assert "verdict" in printed and "SFT (start of RL, 20 steps)" in printed  # the table, in the terminal


def pasted_command(report: Path) -> list[str]:
    """The "Produced by" command of a report, as a shell would split it when pasted."""
    text = report.read_text()
    return shlex.split(text.split("Produced by:\n\n```\n", 1)[1].split("\n```", 1)[0])


@pytest.mark.slow
def test_ablate_switches_each_trick_off_and_its_command_runs_when_pasted(tmp_path):
    """One ablation, started exactly as its report's "Produced by" line reads, pasted into a shell."""
    out = tmp_path / "ablate"
    argv = ["--output_dir", str(out), "--max_steps", "3", "--reward_norm", "running"]
    line = experiments.command_line("ablate reinforce_pp", argv)
    assert line.startswith("trl-basics ablate reinforce_pp --output_dir ")  # not 'ablate reinforce_pp' quoted
    bin_dir = str(Path(sys.executable).parent)  # where the `trl-basics` entry point is installed
    result = subprocess.run(
        line, shell=True, capture_output=True, text=True, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PATH": bin_dir + os.pathsep + os.environ["PATH"]},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert " ".join(pasted_command(out / "report.md")) == " ".join(shlex.split(line))  # the report shows that line
    report = (out / "report.md").read_text()
    for row in ("all tricks", "without reward_norm", "without kl_shaping", "without advantage_whiten"):
        assert f"| {row} |" in report, row
    assert "Disabled in turn: `reward_norm` (reward_norm='none')" in report
    assert "*kl* plot: not logged by without kl_shaping" in report  # listed, not silently dropped
    assert "without kl_shaping" in result.stdout and "verdict" in result.stdout  # the table, in the terminal
    # The variant's override really reached the run: no reward_norm metric in the run without it.
    history_ = json.loads((out / "runs" / "without_reward_norm" / "trainer_state.json").read_text())["log_history"]
    assert not any("tricks/reward_norm/running_std" in entry for entry in history_)
    history_ = json.loads((out / "runs" / "all_tricks" / "trainer_state.json").read_text())["log_history"]
    assert any("tricks/reward_norm/running_std" in entry for entry in history_)
