"""Resume keeps what it can: a changed setting no saved state depends on goes ahead with a warning; a change that
saved state depends on is refused, naming the components; ``resume_reset_changed_state=True`` starts fresh only the
components whose settings changed. A version-2 trick state file keeps the all-or-nothing rule."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from transformers import TrainerCallback

from trl_basics import TrickArguments, TrickPipeline, checkpoints

from .conftest import copy_checkpoint, make_trainer
from .test_resume_refusals import assert_names_the_file_and_the_options, refusal

TRICKS = checkpoints.TRICK_STATE_FILE


@pytest.fixture
def rloo_checkpoint(rloo_reference, tmp_path):
    """A copy of a complete RLOO checkpoint-1: running reward moments (reward_norm), adaptive KL (kl_shaping)."""
    return copy_checkpoint(rloo_reference / "checkpoint-1", tmp_path / "run")


def saved(checkpoint) -> dict:
    return json.loads((checkpoint / TRICKS).read_text())


@pytest.fixture
def env(tiny_model_dir, task, dataset):
    """The model, task and data set every trainer here is made with."""
    return tiny_model_dir, task, dataset


class LoadedState(TrainerCallback):
    """The trick state as training begins: what the resume loaded, before any further step."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.state: dict | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.state = copy.deepcopy(self.trainer.trick_pipeline.state_dict())


def resumed(env, output_dir, checkpoint, caplog, **overrides):
    """A trainer resumed from ``checkpoint`` (step 1) that trains one more step, and the trick state it loaded."""
    trainer = make_trainer("rloo", *env, output_dir, 2, **overrides)
    loaded = LoadedState(trainer)
    trainer.add_callback(loaded)
    with caplog.at_level(logging.WARNING, logger="trl_basics.checkpoints"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 2  # training went on
    return trainer, loaded.state


def test_the_document_records_what_each_component_depends_on(rloo_checkpoint):
    document = saved(rloo_checkpoint)
    assert document["format_version"] == checkpoints.TRICK_STATE_VERSION == 3
    assert set(document["component_settings"]) == set(document["state"]) == {"kl_shaping", "reward_norm"}
    assert {"kl_coef", "kl_target", "kl_horizon", "kl_estimator"} <= set(document["component_settings"]["kl_shaping"])
    assert "reward_norm" in document["component_settings"]["reward_norm"]
    assert "whiten_advantages" not in {n for names in document["component_settings"].values() for n in names}
    trainer_settings = document["trainer_settings"]
    assert {"beta", "num_generations", "normalize_advantages", "reward_clip_range", "advantage_estimator"} <= set(
        trainer_settings
    )


def test_switching_a_stateless_trick_on_goes_ahead_and_keeps_the_state_bit_exact(
    env, tmp_path, rloo_checkpoint, caplog
):
    trainer, state = resumed(
        env, tmp_path / "new", rloo_checkpoint, caplog, whiten_advantages=True, advantage_clip=2.0
    )
    warnings = [r.getMessage() for r in caplog.records if r.name == "trl_basics.checkpoints"]
    expected = (
        f"Resuming from {rloo_checkpoint} with changed settings no saved trick state depends on: "
        "advantage_clip: None → 2.0; whiten_advantages: False → True"
    )
    assert warnings == [expected]
    assert state == saved(rloo_checkpoint)["state"]  # floats read back from JSON exactly: bit-exact
    assert state["kl_shaping"]["controller"]["value"] != 0.05  # the adaptive coefficient had moved: it was loaded
    assert "advantage_whiten" in trainer.trick_pipeline.names and "advantage_clip" in trainer.trick_pipeline.names


def test_a_changed_kl_target_is_refused_naming_kl_shaping(env, tmp_path, rloo_checkpoint):
    trainer = make_trainer("rloo", *env, tmp_path / "new", 2, kl_target=0.02, whiten_advantages=True)
    message = refusal(trainer, rloo_checkpoint)
    assert (
        "was saved with other settings than this run has (kl_target: 0.01 → 0.02), which the saved state of "
        "kl_shaping depends on. Resume with the checkpoint's values." in message
    ), message
    assert "whiten_advantages" not in message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)


def test_the_opt_out_resets_only_the_kl_controller_and_keeps_the_reward_moments(
    env, tmp_path, rloo_checkpoint, caplog
):
    trainer, state = resumed(
        env, tmp_path / "new", rloo_checkpoint, caplog, kl_target=0.02, kl_horizon=500, resume_reset_changed_state=True
    )
    assert (
        f"resume_reset_changed_state=True: {rloo_checkpoint / TRICKS} was saved with other settings than this run "
        "has (kl_horizon: 10000 → 500; kl_target: 0.01 → 0.02), which the saved state of kl_shaping depends on; the "
        "trick state starts fresh for kl_shaping and is kept for reward_norm (the model, optimizer, scheduler, RNG "
        f"and step resume from {rloo_checkpoint})" in caplog.text
    ), caplog.text
    assert state["reward_norm"] == saved(rloo_checkpoint)["state"]["reward_norm"]  # kept, bit-exact
    assert state["kl_shaping"] == trainer.build_pipeline().state_dict()["kl_shaping"]  # fresh
    assert state["kl_shaping"] != saved(rloo_checkpoint)["state"]["kl_shaping"]


@pytest.mark.parametrize(
    ("overrides", "change"),
    [
        ({"normalize_advantages": True}, "normalize_advantages: False → True"),
        ({"reward_clip_range": (-1.0, 1.0)}, "reward_clip_range: None → [-1.0, 1.0]"),
    ],
)
def test_a_changed_trainer_setting_is_refused(env, overrides, change, tmp_path, rloo_checkpoint):
    trainer = make_trainer("rloo", *env, tmp_path / "new", 2, **overrides)
    message = refusal(trainer, rloo_checkpoint)
    assert (
        f"was saved with other settings than this run has ({change}), which the trainer and the saved state of "
        "kl_shaping, reward_norm depend on" in message
    ), message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)


def test_the_opt_out_on_a_trainer_setting_starts_every_component_fresh(env, tmp_path, rloo_checkpoint, caplog):
    trainer, state = resumed(
        env, tmp_path / "new", rloo_checkpoint, caplog, normalize_advantages=True, resume_reset_changed_state=True
    )
    assert "the trick state starts fresh for kl_shaping, reward_norm and is kept for no component" in caplog.text
    assert state == trainer.build_pipeline().state_dict()


def _as_version_2(checkpoint) -> dict:
    document = saved(checkpoint)
    for key in ("trainer_settings", "component_settings"):
        document.pop(key)
    document["format_version"] = 2
    (checkpoint / TRICKS).write_text(json.dumps(document))
    checkpoints.mark_complete(str(checkpoint), 1)
    return document


def test_a_version_2_document_still_resumes_with_the_all_or_nothing_rule(env, tmp_path, rloo_checkpoint, caplog):
    document = _as_version_2(rloo_checkpoint)
    _, state = resumed(env, tmp_path / "new", rloo_checkpoint, caplog)
    assert state == document["state"]

    refused = make_trainer("rloo", *env, tmp_path / "other", 2, whiten_advantages=True)
    message = refusal(refused, rloo_checkpoint)
    assert (
        "was saved with other settings than this run has (whiten_advantages: False → True). Resume with the "
        "checkpoint's values." in message
    ), message
    assert_names_the_file_and_the_options(message, rloo_checkpoint)

    caplog.clear()
    reset, state = resumed(
        env, tmp_path / "reset", rloo_checkpoint, caplog, whiten_advantages=True, resume_reset_changed_state=True
    )
    assert "the trick state starts fresh (the model" in caplog.text
    assert state == reset.build_pipeline().state_dict()


def test_an_unknown_version_is_refused(env, tmp_path, rloo_checkpoint):
    document = saved(rloo_checkpoint)
    document["format_version"] = 4
    (rloo_checkpoint / TRICKS).write_text(json.dumps(document))
    checkpoints.mark_complete(str(rloo_checkpoint), 1)
    message = refusal(make_trainer("rloo", *env, tmp_path / "new", 2), rloo_checkpoint)
    assert (
        "has format 'trl_basics.trick_state' version 4; this trl_basics reads 'trl_basics.trick_state' versions 2, 3"
        in message
    )


# --- the pipeline, without a model -----------------------------------------------------------------------------------


def test_the_pipeline_names_the_settings_each_stateful_component_depends_on(registry):
    args = TrickArguments(
        reward_scale=True, kl_coef=0.1, kl_target=1.0, whiten_advantages=True, advantage_estimator="moving_average"
    )
    dependencies = TrickPipeline.from_args(args, registry).state_dependencies()
    assert set(dependencies) == {"reward_scale", "kl_shaping", "moving_average"}  # whitening keeps no state
    assert dependencies["reward_scale"][:2] == ["reward_scale", "reward_norm"]
    assert dependencies["kl_shaping"][:2] == ["kl_coef", "kl_target"]
    assert {"baseline_decay", "advantage_estimator"} <= set(dependencies["moving_average"])
    running = TrickPipeline.from_args(TrickArguments(reward_norm="running"), registry).state_dependencies()
    assert running == {"reward_norm": ["reward_norm", "reward_weights"]}
    assert TrickPipeline.from_args(TrickArguments(reward_norm="batch"), registry).state_dependencies() == {}


def test_load_state_dict_keeps_the_reset_components_fresh(registry):
    args = TrickArguments(reward_norm="running", kl_coef=0.1, kl_target=1.0)
    saved_state = {
        "reward_norm": {"moments": {"mean": 1.5, "m2": 2.0, "count": 4.0}},
        "kl_shaping": {"controller": {"value": 0.3}},
        "reward_scale": {"moments": {}},  # a component this run does not switch on, reset: ignored
    }
    pipeline = TrickPipeline.from_args(args, registry)
    fresh = pipeline.state_dict()
    pipeline.load_state_dict(saved_state, reset={"kl_shaping", "reward_scale"})
    assert pipeline.state_dict()["kl_shaping"] == fresh["kl_shaping"]
    assert pipeline.state_dict()["reward_norm"]["moments"]["mean"] == 1.5
