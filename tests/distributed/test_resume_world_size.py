"""A checkpoint resumes on another number of processes (2 → 1, then 1 → 2) with its trick state exactly as saved.

The running reward moments and the KL controller are global: the trick state is saved by the main process only, is
the same on every rank (its statistics are over the gathered batch or all-reduced), and is loaded by every rank
from the one file. The data order and the per-process RNG states are not kept across such a resume (a warning says
so); ``docs/reliability.md`` describes it.
"""

import json
from pathlib import Path

import pytest

from trl_basics import checkpoints

from .test_two_processes import accelerate_launch

WORKER = Path(__file__).with_name("resume_worker.py")


def run(num_processes, model_dir, output_dir, max_steps, checkpoint=None):
    report = output_dir.with_suffix(".json")
    args = [str(WORKER), model_dir, str(output_dir), str(max_steps), str(report)]
    result = accelerate_launch(num_processes, *args, *([str(checkpoint)] if checkpoint else []), timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(report.read_text()), result.stderr


def saved_state(checkpoint: Path) -> dict:
    document = json.loads((checkpoint / checkpoints.TRICK_STATE_FILE).read_text())
    return document["state"], document["num_processes"]


def assert_resumed_exactly(report, checkpoint, world, steps):
    state, _ = saved_state(checkpoint)
    assert report["world"] == world and len(report["begin"]) == world
    for loaded in report["begin"]:
        assert json.loads(loaded) == state  # every rank, bit-exact (floats read back from JSON exactly)
    assert report["global_step"] == steps  # training went on
    ended = [json.loads(end) for end in report["end"]]
    assert all(end == ended[0] for end in ended)  # the same on every rank after a further step
    assert ended[0]["reward_norm"]["moments"]["count"] == state["reward_norm"]["moments"]["count"] + 8


@pytest.mark.slow
def test_resume_on_another_number_of_processes_keeps_the_trick_state_exactly(tmp_path, tiny_model_dir):
    two, _ = run(2, tiny_model_dir, tmp_path / "two", 2)
    assert two["world"] == 2 and two["global_step"] == 2
    first = tmp_path / "two" / "checkpoint-2"
    state, processes = saved_state(first)
    assert processes == 2
    assert [json.loads(end) for end in two["end"]] == [state, state]  # what every rank held, saved once
    assert {p.name for p in first.glob("rng_state*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}

    one, log = run(1, tiny_model_dir, tmp_path / "one", 3, first)  # 2 → 1
    assert_resumed_exactly(one, first, world=1, steps=3)
    assert f"Resuming from {first}, saved by 2 process(es), with 1: the trick state" in log, log[-3000:]

    second = tmp_path / "one" / "checkpoint-3"
    assert saved_state(second)[1] == 1 and (second / "rng_state.pth").exists()
    back, log = run(2, tiny_model_dir, tmp_path / "back", 4, second)  # 1 → 2
    assert_resumed_exactly(back, second, world=2, steps=4)
    assert log.count(f"Resuming from {second}, saved by 1 process(es), with 2: the trick state") == 1, log[-3000:]
