"""The collapse alarm of every trainer, on recorded real runs of the kit.

Traces (tests/collapse_traces/*.json, one dict of logged metrics per training step, with the settings that made
them in "source"):

- ``demo_rloo_lr3e-3_seed0``: a real collapse. The RLOO run of ``trl-basics demo --seed 0`` at the old learning
  rate 3e-3: the reward model's reward fell from ≈2.5 to 0.11 on the last step (60), the entropy rose from ≈2.0
  to 3.13 and the final policy solved 42% of the task (100% the step before).
- ``healthy_*``: the runs of tests/learning/test_critic_free.py and tests/learning/test_ppo_max_learning.py (same settings,
  seed 0), all of which learn the task.
- ``demo_healthy_*``: RLOO, PPO-max and GRPO runs of ``trl-basics demo`` (seeds 0 and 1) at its learning rate 1.5e-3,
  against the learned reward model, whose score is noisier than the task reward; every one ends above the SFT model.
"""

import json
import logging
from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState

from trl_basics import CollapseAlarmCallback
from trl_basics.callbacks import COLLAPSE_SIGNALS

TRACES = Path(__file__).parent / "collapse_traces"
HEALTHY = sorted(p.stem for p in TRACES.glob("healthy_*.json"))
DEMO_HEALTHY = sorted(p.stem for p in TRACES.glob("demo_healthy_*.json"))
COLLAPSED = {"demo_rloo_lr3e-3_seed0": 60}  # trace -> the step it collapsed on


def steps(name):
    return json.loads((TRACES / f"{name}.json").read_text())["steps"]


def replay(name, mode="warn", **kwargs):
    """Feed a trace to the alarm the way a trainer does: step metrics into ``_metrics``, ``on_step_end``, log."""
    from collections import defaultdict

    metrics = {"train": defaultdict(list)}
    callback = CollapseAlarmCallback(mode=mode, max_completion_length=4, kl_key="kl", metrics=metrics, **kwargs)
    state, control, logged = TrainerState(), TrainerControl(), []
    for step, entry in enumerate(steps(name), start=1):
        for key, value in entry.items():
            metrics["train"][key].append(value)
        state.global_step = step
        control = callback.on_step_end(None, state, control)
        logged.append({k: sum(v) / len(v) for k, v in metrics["train"].items()})
        metrics["train"] = defaultdict(list)  # what TRL's log() does after every logged step
        callback.metrics = metrics
        if control.should_training_stop:
            break
    return callback, control, logged


def test_there_are_healthy_traces_of_every_learning_test_and_of_the_demo():
    assert len(DEMO_HEALTHY) == 6
    assert set(HEALTHY) == {
        "healthy_ppo_max", "healthy_reinforce_ma", "healthy_reinforce_pp", "healthy_reinforce_pp_baseline",
        "healthy_rloo", "healthy_rloo_paper_faithful",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(COLLAPSED))
def test_fires_on_the_recorded_real_collapse_at_its_step_and_only_there(name, caplog):
    with caplog.at_level(logging.WARNING):
        callback, control, logged = replay(name)
    assert [a.step for a in callback.alarms] == [COLLAPSED[name]]
    signals = callback.alarms[0]
    assert signals.sudden_collapse and signals.reward_drop_after_rise and signals.entropy_jump
    assert not control.should_training_stop  # "warn" only warns
    assert "Policy collapse at step 60" in caplog.text and "lower the learning rate" in caplog.text
    # Every step logs every collapse/* metric; the alarm metric is 1 exactly at the collapse.
    for entry in logged:
        assert {f"collapse/{n}" for n in COLLAPSE_SIGNALS} | {"collapse/alarm"} <= set(entry)
    assert [i + 1 for i, e in enumerate(logged) if e["collapse/alarm"]] == [COLLAPSED[name]]


def test_stop_mode_stops_at_the_collapse():
    _, control, logged = replay("demo_rloo_lr3e-3_seed0", mode="stop")
    assert control.should_training_stop and len(logged) == 60


def test_each_half_of_the_sudden_pattern_alone_does_not_fire():
    trace = steps("demo_rloo_lr3e-3_seed0")
    callback = CollapseAlarmCallback(max_completion_length=4, kl_key="kl")
    last = None
    for step, entry in enumerate(trace[:-1], start=1):
        callback.observe(step, entry)
    # The reward drop with the entropy and perplexity of the step before: no jump, so no alarm.
    last = callback.observe(60, {**trace[-1], "entropy": trace[-2]["entropy"], "perplexity": trace[-2]["perplexity"]})
    assert last.reward_drop_after_rise and not last.entropy_jump and not last.collapse


@pytest.mark.parametrize("name", HEALTHY + DEMO_HEALTHY)
def test_silent_on_the_healthy_runs_of_the_learning_tests_and_the_demo(name):
    callback, _, logged = replay(name, mode="stop")
    assert callback.alarms == [] and len(logged) == len(steps(name))
    assert not any(e["collapse/alarm"] for e in logged)


def test_step_metrics_are_the_means_of_what_the_step_added():
    """Several values per step (gradient accumulation) are averaged; values logged before are not seen twice."""
    from collections import defaultdict

    metrics = {"train": defaultdict(list)}
    callback = CollapseAlarmCallback(metrics=metrics, window=2)
    state, control = TrainerState(), TrainerControl()
    metrics["train"]["reward"] += [1.0, 3.0]
    state.global_step = 1
    callback.on_step_end(None, state, control)
    metrics["train"]["reward"] += [5.0]  # the next step, without a log in between (logging_steps > 1)
    state.global_step = 2
    callback.on_step_end(None, state, control)
    assert list(callback._recent["reward"]) == [2.0, 5.0]
    assert metrics["train"]["collapse/alarm"] == [0.0, 0.0]


def test_off_mode_adds_nothing():
    from collections import defaultdict

    metrics = {"train": defaultdict(list, {"reward": [1.0]})}
    callback = CollapseAlarmCallback(mode="off", metrics=metrics)
    callback.on_step_end(None, TrainerState(), TrainerControl())
    assert set(metrics["train"]) == {"reward"}


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="mode='loud' is not one of 'off', 'warn', 'stop'"):
        CollapseAlarmCallback(mode="loud")
