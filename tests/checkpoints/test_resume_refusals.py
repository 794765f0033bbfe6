"""Resume never trains on a silently changed run: damaged files, changed settings, non-finite state, a missing trick
state file and a different trainer class are refused with one error naming the file, the problem and the options;
``resume_reset_changed_state=True`` is the one documented way on, and it is logged."""

from __future__ import annotations

import json
import logging
import math
import shutil

import pytest

import trl_basics as tb
from trl_basics import checkpoints

from .conftest import copy_checkpoint, make_trainer

TRICKS = checkpoints.TRICK_STATE_FILE


@pytest.fixture
def rloo_checkpoint(rloo_reference, tmp_path):
    """A copy of a complete RLOO checkpoint (running reward moments, adaptive KL) to damage."""
    return copy_checkpoint(rloo_reference / "checkpoint-1", tmp_path / "run")


@pytest.fixture(scope="module")
def rloo_trainer(tmp_path_factory, tiny_model_dir, task, dataset):
    """An RLOO trainer with the checkpoint's settings; every resume here is refused before it trains."""
    return make_trainer("rloo", tiny_model_dir, task, dataset, tmp_path_factory.mktemp("refused"), 2)


def refusal(trainer, checkpoint) -> str:
    with pytest.raises(checkpoints.CheckpointError) as error:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 0  # refused before anything was loaded or trained
    return str(error.value)


def assert_names_the_file_and_the_options(message, checkpoint):
    assert message.startswith(f"Cannot resume from {checkpoint}: {checkpoint / TRICKS} "), message
    assert "Options: resume from an older complete checkpoint" in message
    assert "set resume_reset_changed_state=True to start the trick state fresh" in message
    assert "or start afresh in a new output_dir." in message


def _document(checkpoint):
    return json.loads((checkpoint / TRICKS).read_text())


def _damage(checkpoint, content: bytes, mark: bool = True) -> None:
    """Replace the trick state file; ``mark`` writes the completion marker anew, as if it had been saved so."""
    (checkpoint / TRICKS).write_bytes(content)
    if mark:
        checkpoints.mark_complete(str(checkpoint), 1)


def _edited(checkpoint, edit) -> bytes:
    document = _document(checkpoint)
    edit(document)
    return json.dumps(document).encode()


CORRUPT = {
    "empty": (lambda cp: b"", "is empty"),
    "truncated": (
        lambda cp: (cp / TRICKS).read_bytes()[: len((cp / TRICKS).read_bytes()) // 2],
        "is not valid JSON, it is truncated or damaged (",
    ),
    "binary": (lambda cp: b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 20, "is not text (binary data at byte 0)"),
    "wrong_type": (lambda cp: b"[1, 2, 3]", "holds a JSON list where an object is expected"),
    "wrong_type_state": (
        lambda cp: _edited(cp, lambda d: d.update(state="moments")),
        "has state of type str, expected dict",
    ),
    "wrong_type_component": (
        lambda cp: _edited(cp, lambda d: d["state"].update(reward_norm=[1, 2])),
        "has state for reward_norm that is not an object",
    ),
    "missing_keys": (
        lambda cp: _edited(cp, lambda d: [d.pop("settings"), d.pop("trainer_class")]),
        "lacks the key(s) trainer_class, settings",
    ),
    "old_format": (
        lambda cp: json.dumps(_document(cp)["state"]).encode(),  # the bare state of earlier trl_basics versions
        "lacks the key(s) format, format_version, trl_basics_version, trainer_class, settings, state",
    ),
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_trick_state_file_is_refused_naming_file_problem_and_options(kind, rloo_trainer, rloo_checkpoint):
    make, problem = CORRUPT[kind]
    _damage(rloo_checkpoint, make(rloo_checkpoint))
    message = refusal(rloo_trainer, rloo_checkpoint)
    assert problem in message, message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)


def test_state_that_does_not_fit_its_trick_is_refused(rloo_trainer, rloo_checkpoint):
    _damage(rloo_checkpoint, _edited(rloo_checkpoint, lambda d: d["state"]["reward_norm"].update(moments={"n": 1})))
    before = rloo_trainer.trick_pipeline.state_dict()
    message = refusal(rloo_trainer, rloo_checkpoint)
    assert f"{rloo_checkpoint / TRICKS} does not fit this run's tricks (KeyError" in message, message
    assert "resume_reset_changed_state=True" in message
    assert rloo_trainer.trick_pipeline.state_dict() == before  # nothing half-loaded


def test_a_file_damaged_after_it_was_saved_makes_the_checkpoint_incomplete(rloo_trainer, rloo_checkpoint):
    size = (rloo_checkpoint / TRICKS).stat().st_size
    _damage(rloo_checkpoint, (rloo_checkpoint / TRICKS).read_bytes()[:10], mark=False)
    message = refusal(rloo_trainer, rloo_checkpoint)
    assert f"the checkpoint is incomplete: {TRICKS} has 10 bytes, {size} when it was saved" in message, message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_trick_state_is_refused(value, rloo_trainer, rloo_checkpoint):
    _damage(rloo_checkpoint, _edited(rloo_checkpoint, lambda d: d["state"]["reward_norm"]["moments"].update(m2=value)))
    message = refusal(rloo_trainer, rloo_checkpoint)
    assert f"holds non-finite values (reward_norm.moments.m2 = {value})" in message, message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)


def test_a_stateful_run_refuses_a_checkpoint_without_trick_state(rloo_trainer, rloo_checkpoint):
    (rloo_checkpoint / TRICKS).unlink()
    message = refusal(rloo_trainer, rloo_checkpoint)  # the marker lists the file: the checkpoint is incomplete
    assert f"the checkpoint is incomplete: {TRICKS} is missing" in message, message
    checkpoints.mark_complete(str(rloo_checkpoint), 1)  # even when nothing else says it should be there
    message = refusal(rloo_trainer, rloo_checkpoint)
    assert "is missing, but this run keeps trick state (kl_shaping, reward_norm) that would start fresh" in message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)


CHANGED = {
    "kl_coef": ({"kl_coef": 0.2}, "kl_coef: 0.05 → 0.2"),
    "adaptive_to_fixed": ({"kl_target": None}, "kl_target: 0.01 → None"),
    "reward_norm": ({"reward_norm": "batch"}, "reward_norm: 'running' → 'batch'"),
    "reward_norm_off": ({"reward_norm": "none"}, "reward_norm: 'running' → 'none'"),
    "num_generations": ({"num_generations": 2}, "num_generations: 4 → 2"),
    "kl_estimator_and_clamp": ({"kl_estimator": "k2", "kl_clamp": 10.0}, "kl_clamp: None → 10.0; kl_estimator: 'k1'"),
}


@pytest.mark.parametrize("kind", sorted(CHANGED))
def test_changed_settings_are_refused_each_named_old_to_new(
    kind, rloo_checkpoint, tmp_path, tiny_model_dir, task, dataset
):
    overrides, change = CHANGED[kind]
    trainer = make_trainer("rloo", tiny_model_dir, task, dataset, tmp_path / "new", 2, **overrides)
    message = refusal(trainer, rloo_checkpoint)
    assert f"was saved with other settings than this run has ({change}" in message, message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)


def test_the_opt_out_starts_the_changed_trick_state_fresh_and_says_so(
    rloo_checkpoint, tmp_path, caplog, tiny_model_dir, task, dataset
):
    trainer = make_trainer(
        "rloo", tiny_model_dir, task, dataset, tmp_path / "new", 2, kl_coef=0.2, resume_reset_changed_state=True
    )
    with caplog.at_level(logging.WARNING, logger="trl_basics.checkpoints"):
        trainer.train(resume_from_checkpoint=str(rloo_checkpoint))
    assert "resume_reset_changed_state=True" in caplog.text and "kl_coef: 0.05 → 0.2" in caplog.text
    assert "the trick state starts fresh" in caplog.text
    assert trainer.state.global_step == 2  # the model, optimizer and step resumed: one more step was trained
    coefs = {entry["step"]: entry["tricks/kl_shaping/coef"] for entry in trainer.state.log_history if "loss" in entry}
    assert coefs[1] == 0.05 and coefs[2] == 0.2  # step 2 used the new coefficient, not the checkpoint's
    # Only kl_shaping depends on kl_coef: the reward moments were kept (the checkpoint's 8 rewards, then one step's 8).
    assert trainer.trick_pipeline.state_dict()["reward_norm"]["moments"]["count"] == 16


def test_the_opt_out_also_passes_non_finite_state(rloo_checkpoint, tmp_path, caplog, tiny_model_dir, task, dataset):
    _damage(
        rloo_checkpoint, _edited(rloo_checkpoint, lambda d: d["state"]["reward_norm"]["moments"].update(mean=math.nan))
    )
    trainer = make_trainer("rloo", tiny_model_dir, task, dataset, tmp_path / "new", 2, resume_reset_changed_state=True)
    with caplog.at_level(logging.WARNING, logger="trl_basics.checkpoints"):
        trainer.train(resume_from_checkpoint=str(rloo_checkpoint))
    assert "holds non-finite values (reward_norm.moments.mean = nan)" in caplog.text
    moments = trainer.trick_pipeline.state_dict()["reward_norm"]["moments"]
    assert moments["count"] == 8 and math.isfinite(moments["mean"])


def _class_refusal(trainer, checkpoint) -> str:
    message = refusal(trainer, checkpoint)
    assert "resume_reset_changed_state" not in message  # a different trainer is no changed setting to reset
    return message


def test_a_ppo_max_checkpoint_is_refused_by_rloo(ppo_reference, tmp_path, tiny_model_dir, task, dataset):
    checkpoint = copy_checkpoint(ppo_reference / "checkpoint-1", tmp_path / "run")
    for reset in (False, True):
        trainer = make_trainer(
            "rloo", tiny_model_dir, task, dataset, tmp_path / "new", 2, resume_reset_changed_state=reset
        )
        message = _class_refusal(trainer, checkpoint)
        assert (
            f"{checkpoint / TRICKS} was written by PPOMaxTrainer (trl_basics.ppo_max.ppo_max_trainer.PPOMaxTrainer), "
            "and this run is RLOOTrainer (trl_basics.rloo.rloo_trainer.RLOOTrainer)" in message
        ), message
        assert "Options: resume with PPOMaxTrainer; or start afresh in a new output_dir." in message


def test_an_rloo_checkpoint_is_refused_by_reinforce_pp(rloo_checkpoint, tmp_path, tiny_model_dir, task, dataset):
    config = tb.ReinforcePlusPlusConfig(
        output_dir=str(tmp_path / "new"), use_cpu=True, bf16=False, report_to="none", max_steps=2,
        per_device_train_batch_size=8, num_generations=4, max_completion_length=4,
    )  # fmt: skip
    trainer = tb.ReinforcePlusPlusTrainer(
        model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset
    )
    message = _class_refusal(trainer, rloo_checkpoint)
    assert "was written by RLOOTrainer" in message and "this run is ReinforcePlusPlusTrainer" in message, message


def test_ppo_max_refuses_a_missing_or_damaged_critic_optimizer(ppo_reference, tmp_path, tiny_model_dir, task, dataset):
    checkpoint = copy_checkpoint(ppo_reference / "checkpoint-1", tmp_path / "run")
    optimizer = checkpoint / "critic" / "optimizer.pt"
    size = optimizer.stat().st_size
    trainer = make_trainer("ppo_max", tiny_model_dir, task, dataset, tmp_path / "new", 2)

    optimizer.write_bytes(optimizer.read_bytes()[: size // 2])
    message = refusal(trainer, checkpoint)
    assert f"the checkpoint is incomplete: critic/optimizer.pt has {size // 2} bytes, {size} when it" in message

    optimizer.unlink()
    checkpoints.mark_complete(str(checkpoint), 1)
    message = refusal(trainer, checkpoint)
    assert "critic/optimizer.pt (the critic's optimizer) is missing" in message, message

    shutil.copy(ppo_reference / "checkpoint-1" / "critic" / "optimizer.pt", optimizer)
    optimizer.write_bytes(b"\x00" * size)  # same size, but not a torch file: only loading it can tell
    checkpoints.mark_complete(str(checkpoint), 1)
    with pytest.raises(checkpoints.CheckpointError) as error:
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert f"the critic in {checkpoint / 'critic'} cannot be loaded" in str(error.value), str(error.value)
