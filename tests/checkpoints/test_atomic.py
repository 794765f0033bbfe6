"""The pieces of a crash-safe checkpoint, without training: atomic writes killed in every phase, the completion
marker, which checkpoint a resume takes, and rotation once the new checkpoint is complete."""

from __future__ import annotations

import ast
import json
import logging
import os
from pathlib import Path

import pytest

import trl_basics as tb
from trl_basics import checkpoints, seams
from trl_basics.checkpoints import atomic
from trl_basics.checkpoints.atomic import is_temp

from . import kill_points
from .conftest import run_forked

WRITE_PHASES = ("partial", "written", "synced", "replaced")


def _write(path, text, label):
    with checkpoints.atomic_write(str(path), "w", label=label) as f:
        f.write(text)


@pytest.mark.parametrize("phase", WRITE_PHASES)
def test_a_killed_atomic_write_leaves_the_old_file_or_the_new_one(phase, tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    new = json.dumps({"value": list(range(2000))})
    assert run_forked(_write, target, new, "state.json", kill_at=f"state.json:{phase}") == -9
    assert target.read_text() == (new if phase == "replaced" else "old")  # never a partial file
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "state.json"]
    if phase == "replaced":
        assert leftovers == []
    else:
        assert len(leftovers) == 1 and is_temp(leftovers[0]), leftovers
        if phase == "partial":
            assert 0 < (tmp_path / leftovers[0]).stat().st_size < len(new)  # the half-written temporary file
    assert "state.json" in checkpoints.checkpoint_files(str(tmp_path))
    assert not any(is_temp(name) for name in checkpoints.checkpoint_files(str(tmp_path)))


def _fill(path, label):
    with checkpoints.atomic_directory(str(path), label=label) as folder:
        for name in ("a.bin", "b.bin"):
            with open(os.path.join(folder, name), "w") as f:
                f.write("new" * 100)


@pytest.mark.parametrize("phase", WRITE_PHASES[1:])
def test_a_killed_folder_write_leaves_the_old_folder_or_the_new_one(phase, tmp_path):
    target = tmp_path / "critic"
    target.mkdir()
    (target / "a.bin").write_text("old")
    assert run_forked(_fill, target, "critic", kill_at=f"critic:{phase}") == -9
    if phase == "replaced":
        assert sorted(p.name for p in target.iterdir()) == ["a.bin", "b.bin"]
        assert (target / "b.bin").read_text() == "new" * 100
    else:
        assert [p.name for p in target.iterdir()] == ["a.bin"] and (target / "a.bin").read_text() == "old"


def test_a_failed_write_leaves_no_temporary_file_and_the_old_content(tmp_path):
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), checkpoints.atomic_write(str(target), "w") as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_the_kill_hook_counts_hits_and_the_write_points_do_nothing_by_themselves():
    assert atomic._reached("checkpoint:saved") is None  # not installed: nothing happens
    due = kill_points.counter("checkpoint:saved@3")
    assert [due("checkpoint:saved") for _ in range(4)] == [False, False, True, False]
    assert not due("checkpoint:marked")
    assert [kill_points.counter("checkpoint:marked")("checkpoint:marked") for _ in range(2)] == [True, True]


KILL_ENV = "TRL_BASICS_TEST_KILL_AT"  # set in a child below: no write point may read it, or any other variable
EVERY_POINT = [
    *(f"{label}:{phase}" for label in ("state.json", checkpoints.MARKER_FILE) for phase in WRITE_PHASES),
    *(f"critic:{phase}" for phase in WRITE_PHASES[1:]),
    "checkpoint:begin",
    "checkpoint:saved",
    "checkpoint:marked",
]


def _save_with_the_variable_set_at_every_point(root):
    folder = root / "checkpoint-1"
    for point in EVERY_POINT:
        os.environ[KILL_ENV] = point
        checkpoints.begin_checkpoint(str(folder))
        _write(folder / "state.json", point, "state.json")
        _fill(folder / "critic", "critic")
        checkpoints.mark_complete(str(folder), 1)
        assert checkpoints.checkpoint_problems(str(folder)) == []


def test_no_environment_variable_stops_a_write(tmp_path):
    """Only the tests' own replacement of the write point stops a process: the variable alone does nothing."""
    assert run_forked(_save_with_the_variable_set_at_every_point, tmp_path) == 0
    assert (tmp_path / "checkpoint-1" / "state.json").read_text() == EVERY_POINT[-1]
    assert checkpoints.checkpoint_problems(str(tmp_path / "checkpoint-1")) == []
    for module in Path(atomic.__file__).parent.glob("*.py"):  # and none of the package's code reads one
        names = {getattr(node, "attr", getattr(node, "id", None)) for node in ast.walk(ast.parse(module.read_text()))}
        assert not names & {"environ", "environb", "getenv", "getenvb"}, module.name


def _checkpoint(root, step, complete=True, files=("trainer_state.json", checkpoints.TRICK_STATE_FILE)):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"{name} of step {step}")
    if complete:
        checkpoints.mark_complete(str(folder), step)
    return folder


def test_the_marker_lists_every_file_with_its_size(tmp_path):
    folder = _checkpoint(tmp_path, 3, files=("trainer_state.json", "optimizer.pt", "critic/optimizer.pt"))
    marker = json.loads((folder / checkpoints.MARKER_FILE).read_text())
    assert marker["global_step"] == 3
    assert marker["files"] == {
        name: len(f"{name} of step 3") for name in ("critic/optimizer.pt", "optimizer.pt", "trainer_state.json")
    }
    assert checkpoints.checkpoint_problems(str(folder)) == []


def test_what_makes_a_checkpoint_incomplete(tmp_path):
    no_marker = _checkpoint(tmp_path, 1, complete=False, files=("model.safetensors",))
    (no_marker / ".optimizer.pt.tmp-123").write_text("par")
    problems = checkpoints.checkpoint_problems(str(no_marker))
    assert problems[0] == f"it has no {checkpoints.MARKER_FILE}, so its save did not finish"
    assert problems[1] == f"trainer_state.json, {checkpoints.TRICK_STATE_FILE} are missing"
    assert problems[2] == "partly written: .optimizer.pt.tmp-123"

    truncated = _checkpoint(tmp_path, 2, files=("trainer_state.json", "optimizer.pt"))
    (truncated / "optimizer.pt").write_text("opt")
    (truncated / "trainer_state.json").unlink()
    assert checkpoints.checkpoint_problems(str(truncated)) == [
        f"optimizer.pt has 3 bytes, {len('optimizer.pt of step 2')} when it was saved",
        "trainer_state.json is missing",
    ]

    broken_marker = _checkpoint(tmp_path, 3)
    (broken_marker / checkpoints.MARKER_FILE).write_text('{"files": [1]')
    assert checkpoints.checkpoint_problems(str(broken_marker))[0].startswith(
        f"its {checkpoints.MARKER_FILE} is unreadable (JSONDecodeError"
    )
    assert checkpoints.checkpoint_problems(str(tmp_path / "checkpoint-9")) == ["it does not exist"]


def test_resume_true_takes_the_newest_complete_checkpoint_and_names_each_skipped_one(tmp_path, caplog):
    _checkpoint(tmp_path, 9)
    _checkpoint(tmp_path, 10)  # checkpoint-10 sorts after checkpoint-9 by step, not by name
    _checkpoint(tmp_path, 11, complete=False)
    damaged = _checkpoint(tmp_path, 12)
    (damaged / "trainer_state.json").write_text("")
    (tmp_path / "checkpoint-13").write_text("not a folder")
    (tmp_path / "runs").mkdir()
    with caplog.at_level(logging.WARNING, logger="trl_basics.checkpoints"):
        found = checkpoints.resolve_resume(True, str(tmp_path))
    assert found == str(tmp_path / "checkpoint-10")
    assert [record.getMessage() for record in caplog.records] == [
        (
            f"Skipping incomplete checkpoint {tmp_path / 'checkpoint-12'}: trainer_state.json has 0 bytes, "
            f"{len('trainer_state.json of step 12')} when it was saved"
        ),
        (
            f"Skipping incomplete checkpoint {tmp_path / 'checkpoint-11'}: it has no {checkpoints.MARKER_FILE}, so "
            "its save did not finish"
        ),
    ]


def test_resume_true_without_a_complete_checkpoint_is_refused(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="holds no complete checkpoint \\(none at all\\)"):
        checkpoints.resolve_resume(True, str(tmp_path / "empty"))
    _checkpoint(tmp_path, 1, complete=False)
    with pytest.raises(checkpoints.CheckpointError, match="1 incomplete one\\(s\\) skipped"):
        checkpoints.resolve_resume(True, str(tmp_path))


def test_an_explicit_incomplete_checkpoint_is_refused_naming_what_is_missing(tmp_path):
    _checkpoint(tmp_path, 4)
    _checkpoint(tmp_path, 5, complete=False, files=("model.safetensors",))
    assert checkpoints.resolve_resume(str(tmp_path / "checkpoint-4"), "unused") == str(tmp_path / "checkpoint-4")
    with pytest.raises(checkpoints.CheckpointError) as refusal:
        checkpoints.resolve_resume(str(tmp_path / "checkpoint-5"), "unused")
    assert str(refusal.value) == (
        f"Cannot resume from {tmp_path / 'checkpoint-5'}: the checkpoint is incomplete: it has no "
        f"{checkpoints.MARKER_FILE}, so its save did not finish; trainer_state.json, {checkpoints.TRICK_STATE_FILE} "
        f"are missing. Options: resume from {tmp_path / 'checkpoint-4'}, the newest complete checkpoint before it; "
        "resume_from_checkpoint=True picks the newest complete checkpoint of output_dir; or start afresh in a new "
        "output_dir."
    )
    with pytest.raises(checkpoints.CheckpointError, match="it does not exist"):
        checkpoints.resolve_resume(str(tmp_path / "checkpoint-6"), "unused")


def test_a_save_into_an_existing_folder_drops_its_marker_first(tmp_path):
    folder = _checkpoint(tmp_path, 2)
    (folder / ".trl_basics_tricks.json.tmp-77").write_text("{")
    checkpoints.begin_checkpoint(str(folder))
    assert not (folder / checkpoints.MARKER_FILE).exists()
    assert not (folder / ".trl_basics_tricks.json.tmp-77").exists()
    assert checkpoints.checkpoint_problems(str(folder))  # incomplete until the save marks it again


def test_rotation_waits_and_removes_later_incomplete_checkpoints(tmp_path, caplog):
    class Args:
        save_total_limit = 2

    args = Args()
    with seams.rotation_deferred(args) as limit:
        assert args.save_total_limit is None and limit == 2
    assert args.save_total_limit == 2
    with pytest.raises(KeyError), seams.rotation_deferred(args):
        raise KeyError("save failed")
    assert args.save_total_limit == 2  # restored on errors too

    for step in (1, 2):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 7, complete=False)  # left by a run killed at step 7 and resumed from step 2
    current = _checkpoint(tmp_path, 3)
    with caplog.at_level(logging.WARNING, logger="trl_basics.checkpoints"):
        checkpoints.rotate(str(tmp_path), str(current), 2, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    assert "Removing incomplete checkpoint" in caplog.text and "checkpoint-7" in caplog.text
    checkpoints.rotate(str(tmp_path), str(current), None, None)  # no limit: nothing is deleted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_non_finite_values_are_found_anywhere_in_the_state():
    state = {"a": {"b": 1.0, "c": float("nan")}, "d": [0.0, float("inf")], "e": {"f": None, "g": "x", "h": 2}}
    assert checkpoints.nonfinite_values(state) == ["a.c = nan", "d[1] = inf"]


def test_settings_record_every_trick_flag_and_the_trainer_specific_fields():
    import dataclasses

    rpp = tb.ReinforcePlusPlusConfig(output_dir="unused", use_cpu=True, bf16=False, baseline="group")
    settings = checkpoints.run_settings(rpp, "group_mean", tb.ReinforcePlusPlusTrainer.declared_state_settings())
    flags = {f.name for f in dataclasses.fields(tb.TrickArguments)} - {checkpoints.OPT_OUT}
    assert flags - set(checkpoints.MONITOR_SETTINGS) <= set(settings)
    assert not set(checkpoints.MONITOR_SETTINGS) & set(settings)  # the alarm only watches: it may change on resume
    assert set(checkpoints.MONITOR_SETTINGS) <= flags
    assert settings["advantage_estimator"] == "group_mean"
    assert settings["baseline"] == "group" and settings["num_generations"] == rpp.num_generations
    assert settings["beta"] == 0.0
    ppo = tb.PPOMaxConfig(output_dir="unused", use_cpu=True, bf16=False, critic_learning_rate=1e-5)
    ppo_settings = checkpoints.run_settings(ppo, "gae", tb.PPOMaxTrainer.declared_state_settings())
    assert ppo_settings["critic_learning_rate"] == 1e-5 and ppo_settings["value_clip"] == ppo.value_clip
    assert "baseline" not in ppo_settings


def test_a_changed_trainer_specific_setting_is_refused(tmp_path):
    folder = _checkpoint(tmp_path, 1, files=("trainer_state.json",))
    group = tb.ReinforcePlusPlusConfig(output_dir="unused", use_cpu=True, bf16=False, baseline="group")
    plain = tb.ReinforcePlusPlusConfig(output_dir="unused", use_cpu=True, bf16=False)
    declared = tb.ReinforcePlusPlusTrainer.declared_state_settings()
    document = checkpoints.trick_state_document(
        tb.ReinforcePlusPlusTrainer, checkpoints.run_settings(group, "group_mean", declared), {}
    )
    checkpoints.write_json(str(folder / checkpoints.TRICK_STATE_FILE), document)
    with pytest.raises(checkpoints.CheckpointError) as refusal:
        checkpoints.read_trick_state(
            str(folder),
            trainer_class=tb.ReinforcePlusPlusTrainer,
            settings=checkpoints.run_settings(plain, "reinforce", declared),
            stateful=[],
            reset=False,
        )
    assert "advantage_estimator: 'group_mean' → 'reinforce'; baseline: 'group' → 'none'" in str(refusal.value)


def _die_holding_the_progress_bar_lock():
    from tqdm import std

    std.tqdm.get_lock().acquire()
    os.kill(os.getpid(), 9)


def test_a_child_killed_inside_a_progress_bar_blocks_no_one():
    from tqdm import std

    assert run_forked(_die_holding_the_progress_bar_lock) == -9
    lock = std.tqdm.get_lock()
    assert all(part.acquire(timeout=5) for part in lock.locks)  # free: the child had a lock of its own
    lock.release()
