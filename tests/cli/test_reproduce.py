"""`trl-basics reproduce`: the verdict rule and intervals on hand-computed values, resuming from recorded runs, and
the quick smoke run's report structure (not its verdicts)."""

import json
import math

import pytest

from trl_basics.cli import main
from trl_basics.cli import reproduce as reproduce_module
from trl_basics.cli.assessment import RunResult
from trl_basics.cli.claim_stats import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    VERDICTS,
    Interval,
    difference_interval,
    mean_interval,
    t_quantile,
    verdict,
)
from trl_basics.cli.claims import CLAIMS, PAPERS, RUNS, runs_for
from trl_basics.cli.reproduce_report import COLUMNS


def test_mean_interval_is_the_t_interval_over_seeds():
    interval = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")])  # NaN: a seed without a value
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)  # t(4) · sd / √n
    assert interval.n == 5 and interval.mean == 3.0
    assert interval.low == pytest.approx(3.0 - half) and interval.high == pytest.approx(3.0 + half)
    assert mean_interval([2.0]).n == 1 and math.isnan(mean_interval([2.0]).low)


def test_differences_are_paired_by_seed_or_welch():
    paired, test = difference_interval({0: 3.0, 1: 5.0, 2: 4.0}, {0: 1.0, 1: 2.0, 2: 3.0})
    assert test == "paired t over seeds"  # d = [2, 3, 1]: mean 2, sd 1, t(2) = 4.303
    assert paired.mean == 2.0 and paired.high - paired.mean == pytest.approx(4.303 / math.sqrt(3))
    welch, test = difference_interval({0: 1.0, 1: 2.0, 2: 3.0}, {3: 4.0, 4: 6.0})
    # va = 1/3, vb = 2/2: se = √(4/3); Welch df = (4/3)² / ((1/3)²/2 + 1) = 1.68 → rounded down to 1: t = 12.706.
    assert test == "Welch t" and welch.mean == -3.0
    assert welch.high - welch.mean == pytest.approx(12.706 * math.sqrt(4 / 3))
    assert t_quantile(1.68) == 12.706 and t_quantile(45) == 2.042 and t_quantile(0.5) == math.inf


def test_the_verdict_rule():
    assert verdict(Interval(1.0, 0.1, 1.9, 5)) == HOLDS
    assert verdict(Interval(-1.0, -1.9, -0.1, 5)) == DOES_NOT_HOLD
    assert verdict(Interval(0.5, -0.1, 1.1, 5)) == INCONCLUSIVE
    assert verdict(Interval(1.0, 0.1, 1.9, 1)) == INCONCLUSIVE  # one seed: no interval
    assert verdict(Interval(0.0, -0.04, 0.04, 5), "non_inferiority", 0.05) == HOLDS
    assert verdict(Interval(0.0, -0.06, 0.04, 5), "non_inferiority", 0.05) == INCONCLUSIVE
    assert verdict(Interval(-0.1, -0.15, -0.01, 5), "non_inferiority", 0.05) == DOES_NOT_HOLD
    assert verdict(Interval(0.01, 0.0, 0.04, 5), "upper_bound", 0.05) == HOLDS
    assert verdict(Interval(0.2, 0.1, 0.3, 5), "upper_bound", 0.05) == DOES_NOT_HOLD
    assert verdict(Interval(0.05, 0.0, 0.1, 5), "upper_bound", 0.05) == INCONCLUSIVE


def test_every_claim_has_rows_and_every_run_is_shared_where_it_can_be():
    assert sorted({claim.number for claim in CLAIMS}) == list(range(1, 12))
    assert {claim.paper for claim in CLAIMS} == set(PAPERS)
    users = {key: {c.number for c in CLAIMS if key in c.runs} for key in RUNS}
    assert users["rloo_k4"] == {1, 2, 3, 4, 6}  # one baseline run per seed serves five claims
    assert users["ppo_lam095"] == {1, 5, 10}
    assert len(runs_for(list(PAPERS))) == len(RUNS) == 17


def _args(tmp_path, **overrides):
    return reproduce_module.ReproduceArguments(output_dir=str(tmp_path), **overrides)


def test_a_recorded_run_is_reused_and_an_unfinished_one_is_trained_again(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    config = RUNS["rloo_k4"]
    pipeline = {"task": "token_kind", "sft": "sft-dir", "reward": "rm-dir"}
    recorded = RunResult("rloo_k4-seed0", "rloo", [{"step": 1, "reward": 0.5}], 10.0, 2.0, success_rate=0.25)
    (runs_dir / "rloo_k4-seed0").mkdir(parents=True)
    reproduce_module.write_json_atomically(runs_dir / "rloo_k4-seed0" / "result.json", reproduce_module.result_to_json(recorded))
    (runs_dir / "rloo_k4-seed1").mkdir()
    (runs_dir / "rloo_k4-seed1" / "leftover.txt").write_text("from an interrupted attempt")
    trained = []

    def fake_training(label, algorithm, args, flags, runs, in_process=False):
        trained.append((label, algorithm, args.seed, args.model_name_or_path, in_process))
        return RunResult(label, algorithm, [{"step": 1, "reward": 1.0}], 1.0, 1.0, success_rate=0.5)

    monkeypatch.setattr(reproduce_module, "run_training", fake_training)
    assert reproduce_module.train_once(config, _args(tmp_path), 0, pipeline, runs_dir) == recorded
    assert trained == []
    again = reproduce_module.train_once(config, _args(tmp_path), 1, pipeline, runs_dir)
    assert trained == [("rloo_k4-seed1", "rloo", 1, "sft-dir", True)]
    assert not (runs_dir / "rloo_k4-seed1" / "leftover.txt").exists()
    saved = json.loads((runs_dir / "rloo_k4-seed1" / "result.json").read_text())
    assert reproduce_module.result_from_json(saved) == again and again.success_rate == 0.5


def test_run_flags_of_a_configuration(tmp_path):
    args = _args(tmp_path)
    pipeline = {"task": "token_kind", "sft": "/m/sft", "reward": "/m/rm"}
    flags = reproduce_module.run_flags(RUNS["vanilla_ppo"], args, pipeline, tmp_path / "run")
    assert flags[:6] == ["--reward_norm", "none", "--critic_model_path", "/m/sft", "--steps_per_generation", "4"]
    assert flags[6:8] == ["--collapse_alarm_window", "5"] and flags[8] == "--config"
    assert (tmp_path / "run" / "ablation.yaml").read_text() == "kl_coef: null\nreward_clip: null\n"
    assert reproduce_module.run_flags(RUNS["grpo_small"], args, pipeline, tmp_path / "r2") == ["--num_prompts", "8"]
    k2 = reproduce_module.run_arguments(RUNS["rloo_k2"], args, 3, pipeline)
    assert (k2.num_generations, k2.completions_per_step, k2.seed) == (2, 16, 3)  # same prompts per step as k=4


def test_an_unknown_paper_is_refused(capsys):
    assert main(["reproduce", "rlhf", "--quick"]) == 2
    assert "unknown paper 'rlhf'" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_reproduce_writes_every_table_and_resumes(tmp_path, capsys):
    out = tmp_path / "reproduce"
    assert main(["reproduce", "--quick", "--output_dir", str(out)]) == 0
    data = json.loads((out / "claims.json").read_text())
    assert list(data["papers"]) == list(PAPERS) and data["quick"] is True and data["seeds"] == 1
    numbers = set()
    for paper, table in data["papers"].items():
        assert table["claims"], paper
        for row in table["claims"]:
            assert row["verdict"] in VERDICTS
            assert {"claim", "reported", "measure", "measured", "mean", "ci_low", "ci_high", "n", "test"} <= set(row)
            numbers.add(row["number"])
        assert (out / paper / "report.md").exists() and (out / paper / "reward.png").stat().st_size > 1000
    assert numbers == set(range(1, 12))
    report = (out / "report.md").read_text()
    assert report.count("| " + " | ".join(COLUMNS) + " |") == 3
    assert "Verdict rule (fixed before any run)" in report and "trl-basics reproduce --quick" in report
    assert (out / "report.html").read_text().count("<table>") == 3
    assert (out / "reinforce_pp" / "reward_vs_kl.png").exists()
    # Run again: every run is recorded, so nothing trains again.
    logs = {path: path.stat().st_mtime_ns for path in (out / "runs").glob("*/train.log")}
    assert len(logs) == len(RUNS)
    capsys.readouterr()
    assert main(["reproduce", "--quick", "--output_dir", str(out)]) == 0
    assert {path: path.stat().st_mtime_ns for path in logs} == logs


def test_a_failed_run_is_reported_but_not_recorded(tmp_path, monkeypatch):
    def failing(label, algorithm, args, flags, runs, in_process=False):
        return RunResult(label, algorithm, [], 0.0, 0.0, failed="exit code 1: boom")

    monkeypatch.setattr(reproduce_module, "run_training", failing)
    pipeline = {"task": "token_kind", "sft": "sft-dir", "reward": "rm-dir"}
    result = reproduce_module.train_once(RUNS["grpo"], _args(tmp_path), 0, pipeline, tmp_path / "runs")
    assert result.failed == "exit code 1: boom"
    assert not (tmp_path / "runs" / "grpo-seed0" / "result.json").exists()  # the next invocation tries it again


def test_an_interrupted_in_process_run_stops_the_command(tmp_path, monkeypatch):
    from trl_basics.cli import experiments, train

    monkeypatch.setattr(train, "run", lambda algorithm, argv: 130)  # what `train` returns after a graceful stop
    with pytest.raises(KeyboardInterrupt):
        experiments.run_in_process(["python", "-m", "trl_basics.cli", "train", "rloo"], tmp_path / "log.txt")
    monkeypatch.setattr(train, "run", lambda algorithm, argv: 0)
    code, _, _ = experiments.run_in_process(["python", "-m", "trl_basics.cli", "train", "rloo"], tmp_path / "log.txt")
    assert code == 0


@pytest.mark.parametrize("estimator", ["raft", "vanilla"])
def test_the_baseline_estimators_are_accepted_by_compare_and_ablate(tmp_path, estimator):
    from trl_basics.cli.ablate import ablation_switches
    from trl_basics.cli.experiments import ExperimentArguments, check_flags

    flags = ["--advantage_estimator", estimator]
    check_flags(["rloo", "reinforce_pp", "ppo_max"], flags, tmp_path)  # refuses nothing
    switches = ablation_switches("rloo", ExperimentArguments(output_dir=str(tmp_path)), [*flags, "--beta", "0.05"])
    assert switches == {"kl_beta": {"beta": 0.0}}  # RLOO's beta is ablated; an estimator is chosen, not switched off
    with pytest.raises(ValueError, match="bogus"):
        check_flags(["rloo"], ["--advantage_estimator", "bogus"], tmp_path)
