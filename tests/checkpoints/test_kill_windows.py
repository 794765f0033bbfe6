"""SIGKILL inside each of trl_basics' write windows of a real training run, then resume with ``True``.

Every run saves each step and keeps one checkpoint (``save_total_limit=1``, the hardest case: rotation must not take
the only complete checkpoint before the new one is complete). The child kills itself during its second save, at a
named write point (``kill_points.py``); the resumed run must pick the newest complete checkpoint and end on exactly
the weights and trick state of an uninterrupted run.
"""

from __future__ import annotations

import logging

import pytest

from trl_basics import checkpoints

from .conftest import assert_same_checkpoint, run_forked, train

TRICKS = checkpoints.TRICK_STATE_FILE
MARKER = checkpoints.MARKER_FILE

# One kill point inside each window of a real run (every phase of the writers is covered in test_atomic.py), and the
# step of the newest complete checkpoint it leaves behind.
RLOO_POINTS = {
    f"{TRICKS}:partial": 1,  # the trick state half written under its temporary name
    "checkpoint:saved": 1,  # every file written (TRL's and ours), no marker yet
    f"{MARKER}:synced": 1,  # the marker complete under its temporary name
    "checkpoint:marked": 2,  # the marker in place, the older checkpoint not yet rotated away
}
PPO_POINTS = {
    "critic:synced": 1,  # the critic's weights complete in a temporary folder
    "critic/optimizer.pt:partial": 1,  # the critic's optimizer half written
}


def _kill_then_resume(kind, point, expected, reference, tmp_path, caplog, tiny_model_dir, task, dataset):
    out = tmp_path / "run"
    code = run_forked(train, kind, tiny_model_dir, task, dataset, out, 3, kill_at=f"{point}@2")
    assert code == -9, f"the run was not killed at {point} (exit {code})"
    assert not (out / "checkpoint-3").exists()

    # What was left: the newest complete checkpoint, with every incomplete one named in one log line.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trl_basics.checkpoints"):
        found = checkpoints.find_resumable_checkpoint(str(out))
    assert found == str(out / f"checkpoint-{expected}"), point
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping incomplete checkpoint")]
    if expected == 1:
        assert len(skipped) == 1 and "checkpoint-2" in skipped[0], skipped
        # An explicit path to the incomplete checkpoint is refused, naming what is missing and the way out.
        with pytest.raises(checkpoints.CheckpointError) as refusal:
            checkpoints.resolve_resume(str(out / "checkpoint-2"), str(out))
        message = str(refusal.value)
        assert "incomplete" in message and (MARKER in message or "missing" in message), message
        assert str(out / "checkpoint-1") in message
    else:
        assert not skipped, skipped

    # Resume the same command with resume_from_checkpoint=True: it ends where the uninterrupted run ends.
    assert run_forked(train, kind, tiny_model_dir, task, dataset, out, 3, resume=True) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert checkpoints.checkpoint_problems(str(out / "checkpoint-3")) == []
    assert_same_checkpoint(out / "checkpoint-3", reference / "checkpoint-3")


@pytest.mark.parametrize("point", sorted(RLOO_POINTS))
def test_kill_in_each_write_window_rloo(point, rloo_reference, tmp_path, caplog, tiny_model_dir, task, dataset):
    _kill_then_resume(
        "rloo", point, RLOO_POINTS[point], rloo_reference, tmp_path, caplog, tiny_model_dir, task, dataset
    )


@pytest.mark.parametrize("point", sorted(PPO_POINTS))
def test_kill_in_each_critic_write_window_ppo_max(
    point, ppo_reference, tmp_path, caplog, tiny_model_dir, task, dataset
):
    _kill_then_resume(
        "ppo_max", point, PPO_POINTS[point], ppo_reference, tmp_path, caplog, tiny_model_dir, task, dataset
    )
