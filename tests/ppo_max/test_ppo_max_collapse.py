"""The collapse alarm fires on the paper's signature (length to the cap, perplexity to 1, KL spike, reward still
rising; Zheng et al. 2023 §5.2, Fig. 4) and on nothing less."""

import logging

import pytest
from helpers import ppo_max_cpu_kwargs as cpu_kwargs
from transformers import TrainerControl, TrainerState

from trl_basics import CollapseAlarmCallback, PPOMaxConfig, PPOMaxTrainer

KL = "tricks/kl_shaping/k1_sequence_mean"
CAP = 64


def healthy(step):
    """Fig. 9-like: reward up, length up a little but far from the cap, perplexity steady, KL small and smooth."""
    return {"reward": 0.5 + 0.01 * step, "completions/mean_length": 30 + 0.1 * step, "perplexity": 3.0, KL: 0.05}


def collapsing(step):
    """Fig. 4-like: from step 20 the length runs to the cap, perplexity to ~1 and KL jumps; reward keeps rising."""
    entry = healthy(step)
    if step >= 20:
        entry.update({"completions/mean_length": CAP, "perplexity": 1.05, KL: 0.6, "reward": 1.0 + 0.02 * step})
    return entry


def run(callback, make_entry, steps=30):
    state, control = TrainerState(), TrainerControl()
    for step in range(1, steps + 1):
        state.global_step = step
        control = callback.on_log(None, state, control, logs=make_entry(step))
        if control.should_training_stop:
            break
    return state, control


def alarm(mode="warn"):
    return CollapseAlarmCallback(mode=mode, max_completion_length=CAP, kl_key=KL, window=5)


def test_fires_on_the_collapse_signature_and_warns(caplog):
    callback = alarm("warn")
    with caplog.at_level(logging.WARNING):
        _, control = run(callback, collapsing)
    assert callback.alarms and callback.alarms[0].collapse
    assert 20 < callback.alarms[0].step <= 25  # as soon as the latest window shows it
    assert not control.should_training_stop
    assert "collapse signature" in caplog.text


def test_stop_mode_stops_training():
    callback = alarm("stop")
    state, control = run(callback, collapsing)
    assert control.should_training_stop and state.global_step == callback.alarms[0].step


def test_healthy_run_never_fires():
    callback = alarm("stop")
    run(callback, healthy, steps=100)
    assert not callback.alarms


@pytest.mark.parametrize("missing", ["length", "perplexity", "kl", "reward"])
def test_three_signals_are_not_enough(missing):
    def partial(step):
        entry = collapsing(step)
        if step >= 20:
            if missing == "length":
                entry["completions/mean_length"] = 30
            elif missing == "perplexity":
                entry["perplexity"] = 3.0
            elif missing == "kl":
                entry[KL] = 0.05
            else:
                entry["reward"] = 0.4  # the reward falls: a plain failure, not a hacked reward
        return entry

    callback = alarm("stop")
    run(callback, partial)
    assert not callback.alarms


def test_off_mode_and_non_training_logs_are_ignored():
    callback = CollapseAlarmCallback(mode="off", max_completion_length=CAP, kl_key=KL, window=5)
    run(callback, collapsing)
    assert not callback.alarms
    callback = alarm()
    assert callback.observe(1, {"train_runtime": 1.0}) is None


def test_trainer_installs_the_alarm_by_flag(tmp_path, tiny_model_dir, task, dataset):
    trainer = PPOMaxTrainer(
        model=tiny_model_dir, reward_funcs=task.reward_func, train_dataset=dataset,
        args=PPOMaxConfig(**cpu_kwargs(tmp_path), collapse_alarm="stop", collapse_alarm_window=3),
    )  # fmt: skip
    alarm_callback = trainer.collapse_alarm
    assert alarm_callback in trainer.callback_handler.callbacks
    assert (alarm_callback.mode, alarm_callback.kl_key, alarm_callback.max_completion_length) == ("stop", KL, 4)
    assert alarm_callback.window == 3
