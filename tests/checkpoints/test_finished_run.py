"""Resuming a run that already reached ``max_steps`` (a job requeued after its last save, or killed while it saved
its final model) trains nothing: transformers' ``train`` would take one more step, past ``max_steps``, and save it
as a checkpoint of the same run. The model holds the last checkpoint's weights, ready to be saved."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from trl_basics import checkpoints

from .conftest import make_trainer


def _weights(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["rloo", "ppo_max"])
def test_a_finished_run_resumes_to_its_end_without_a_step(kind, tmp_path, tiny_model_dir, task, dataset, caplog):
    out = tmp_path / "run"
    finished = make_trainer(kind, tiny_model_dir, task, dataset, out, max_steps=2)
    finished_loss = finished.train().training_loss
    weights = _weights(finished.model)
    critic = _weights(finished.critic.model) if kind == "ppo_max" else None

    again = make_trainer(kind, tiny_model_dir, task, dataset, out, max_steps=2)
    with caplog.at_level(logging.WARNING):
        output = again.train(resume_from_checkpoint=True)
    assert output.global_step == 2 and again.state.global_step == 2
    # The run's training loss, as the finished run reported it (every step was logged), not NaN.
    assert output.training_loss == pytest.approx(finished_loss, rel=1e-6, abs=1e-9)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # no checkpoint-3
    assert f"{out / 'checkpoint-2'} was saved at step 2 and max_steps is 2: the run is finished" in caplog.text
    for name, value in _weights(again.model).items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)
    if kind == "ppo_max":
        for name, value in _weights(again.critic.model).items():
            torch.testing.assert_close(value, critic[name], rtol=0, atol=0)

    # Training longer from the same checkpoint is a resume as usual.
    longer = make_trainer(kind, tiny_model_dir, task, dataset, out, max_steps=3)
    longer.train(resume_from_checkpoint=True)
    assert longer.state.global_step == 3
    assert checkpoints.find_resumable_checkpoint(str(out)) == str(out / "checkpoint-3")


def test_the_command_line_saves_the_finished_model(tmp_path, tiny_model_dir, capsys):
    from trl_basics.cli import main

    from .test_cli_resume import FAST

    out = tmp_path / "run"
    argv = ["train", "rloo", "--model_name_or_path", tiny_model_dir, "--output_dir", str(out), *FAST]
    assert main(argv) == 0
    (out / "model.safetensors").unlink()  # as if killed before the final save
    assert main([*argv, "--resume_from_checkpoint", "latest"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    final, last = load_file(out / "model.safetensors"), load_file(out / "checkpoint-3" / "model.safetensors")
    assert final.keys() == last.keys()
    for name in final:
        assert torch.equal(final[name], last[name]), name


def test_the_finished_runs_loss_is_rebuilt_from_its_logs():
    """transformers logs each interval's mean loss; the run's loss is the mean per step, so intervals weigh by
    their length: steps 1-2 at 0.5 (logged at step 2), steps 3-5 at 2.0 (logged at step 5) -> (2 x 0.5 + 3 x 2) / 5."""
    history = [
        {"loss": 0.5, "step": 2},
        {"eval_loss": 9.0, "step": 2},
        {"loss": 2.0, "step": 5},
        {"train_runtime": 1.0, "step": 5},
    ]
    assert checkpoints.logged_training_loss(history) == pytest.approx(7.0 / 5)
    # The run's own end-of-run figure wins where it was logged.
    assert checkpoints.logged_training_loss([*history, {"train_loss": 3.25, "step": 5}]) == 3.25
    # Steps after the last log are not in the history: the mean covers the logged ones.
    assert checkpoints.logged_training_loss(history[:2]) == pytest.approx(0.5)
    # No loss logged at all: there is nothing to report.
    assert math.isnan(checkpoints.logged_training_loss([{"eval_loss": 1.0, "step": 1}]))
