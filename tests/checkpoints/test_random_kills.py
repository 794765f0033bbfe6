"""SIGKILL a real training run at random moments, resume each time with ``True``, and end exactly where an
uninterrupted run ends.

The run saves every step and keeps one checkpoint. Half the kills fall at a uniformly random moment of the next few
steps, half at a uniformly random moment of a save (between a step's end and the end of its checkpoint, timed by the
last save seen), so that the save window is hit often. After every kill, the next run must resume from the newest complete checkpoint (computed here
independently) and continue; the last run trains to the end, and its final checkpoint must equal the uninterrupted
run's bit for bit. Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time

from trl_basics import checkpoints
from trl_basics.checkpoints.atomic import is_temp

from .conftest import REFERENCE_STEPS, assert_same_checkpoint, fork, train, wait

MAX_KILLS = 12
TIME_BUDGET_S = 45.0  # the kill loop stops starting new runs after this; the last run then trains to the end


def _events(fd: int, timeout: float) -> list[str]:
    """Lines the child wrote within ``timeout`` seconds (fewer if it closed the pipe)."""
    ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
    if not ready:
        return []
    data = os.read(fd, 65536).decode()
    return [line for line in data.splitlines() if line] or ["eof"]


def _left_mid_save(out) -> bool:
    """A kill hit a save if it left an incomplete checkpoint folder or a temporary file."""
    for folder in out.glob("checkpoint-*"):
        if checkpoints.checkpoint_problems(str(folder)):
            return True
    return any(is_temp(path.name) for path in out.rglob(".*"))


def test_random_kills_always_resume_from_a_complete_checkpoint(
    rloo_reference, tmp_path, tiny_model_dir, task, dataset
):
    rng = random.Random(20261201)
    out = tmp_path / "run"
    started = time.monotonic()
    kills = hits = resumed = 0
    save_time = None  # how long the last observed save took, from the step's end to on_save
    step_time = 1.0  # how long the last observed step took, from one step's end to the next
    finished = False
    while not finished:
        expected = checkpoints.find_resumable_checkpoint(str(out)) if out.exists() else None
        killing = kills < MAX_KILLS and time.monotonic() - started < TIME_BUDGET_S
        read_fd, write_fd = os.pipe()
        pid = fork(
            train, "rloo", tiny_model_dir, task, dataset, out, REFERENCE_STEPS,
            resume=True if expected else None, report_fd=write_fd,
        )  # fmt: skip
        os.close(write_fd)
        # The first run is killed only once it has a complete checkpoint; a resumed run only once it has resumed.
        waiting_for = "saved 1" if expected is None else "begin"
        targeted = kills % 2 == 1
        deadline = time.monotonic() + 120
        armed = False
        kill_at = None
        step_ended = None
        while True:
            timeout = 0.005 if kill_at is None else max(kill_at - time.monotonic(), 0.0)
            lines = _events(read_fd, timeout)
            if "eof" in lines:
                break
            for line in lines:
                now = time.monotonic()
                if line.startswith("begin") and expected is not None:
                    step = int(line.split()[1])
                    assert step == int(expected.rsplit("-", 1)[1]), f"resumed at step {step}, not from {expected}"
                    resumed += 1
                if line.startswith("begin"):
                    step_ended = now
                if line.startswith("step"):
                    if step_ended is not None:
                        step_time = now - step_ended  # a whole step, its save included
                    step_ended = now
                    if armed and targeted and kill_at is None and save_time is not None:
                        kill_at = now + rng.uniform(0.2, 0.8) * save_time  # inside the save that follows the step
                if line.startswith("saved") and step_ended is not None:
                    save_time = now - step_ended
                if (
                    line.split()[0] == waiting_for.split()[0]
                    and line.startswith(waiting_for)
                    and killing
                    and not armed
                ):
                    armed = True
                    if not targeted:
                        kill_at = now + rng.uniform(0.0, 3.0 * step_time)  # any moment of the next three steps
            if kill_at is not None and time.monotonic() >= kill_at:
                os.kill(pid, signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "the run neither finished nor was killed"
        code = wait(pid)
        os.close(read_fd)
        if code == -signal.SIGKILL:
            kills += 1
            hits += _left_mid_save(out)
        else:
            assert code == 0, f"a run ended with exit code {code}"
            finished = True
    elapsed = time.monotonic() - started
    print(
        f"\nrandom kills: {kills} kills, {hits} hit a save (left an incomplete checkpoint or a temporary file), "
        f"{resumed} resumed from the newest complete checkpoint, final run finished; {elapsed:.1f} s"
    )
    assert kills >= 4 and hits >= 1, (kills, hits)
    assert resumed == kills  # every kill was followed by a successful resume from the newest complete checkpoint
    final = out / f"checkpoint-{REFERENCE_STEPS}"
    assert checkpoints.checkpoint_problems(str(final)) == []
    assert_same_checkpoint(final, rloo_reference / f"checkpoint-{REFERENCE_STEPS}")
