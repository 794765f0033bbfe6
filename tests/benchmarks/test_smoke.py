"""Smoke tests of the benchmark scripts: they run end to end and write their tables. Timings are never asserted."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(script, *args, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.mark.slow
def test_speed_benchmark_quick_writes_the_tables(tmp_path):
    out = tmp_path / "speed.md"
    proc = _run("run.py", "--quick", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert "Command: `OMP_NUM_THREADS=1 python benchmarks/run.py --quick" in text
    assert "| tb.RLOOTrainer, no trick / trl.RLOOTrainer | ≤ 1.03 |" in text
    assert "### Unit costs" in text and "### Peak memory" in text
    raw = json.loads(out.with_suffix(".json").read_text())
    assert {row["trainer"] for row in raw["timing"]} == {"trl_rloo", "rloo", "ppo_max", "units"}
    assert {row["trainer"] for row in raw["memory"]} == {"trl_rloo", "rloo", "ppo_max"}
    # identical geometry: every completion has exactly the requested length
    assert all(row["mean_completion_length"] == 4 for row in raw["timing"] if row["trainer"] != "units")


@pytest.mark.slow
def test_learning_benchmark_quick_writes_the_table_and_the_plot(tmp_path):
    out = tmp_path / "learning.md"
    proc = _run("learning.py", "--quick", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-4000:]
    text = out.read_text()
    assert "| RLOO, k=2 | 1 |" in text and "REINFORCE with moving-average baseline" in text
    assert out.with_suffix(".png").stat().st_size > 0


def test_docs_show_every_target_and_the_commands():
    """docs/benchmarks.md holds the latest tables, with every target and the commands that produced them."""
    run = _load("run")
    common = _load("common")
    learning = _load("learning")
    text = (REPO / "docs" / "benchmarks.md").read_text()
    for markers in (run.DOCS_MARKERS, learning.DOCS_MARKERS):
        assert all(marker in text for marker in markers)
    for _, label, *_ in common.TARGETS:
        assert f"| {label}" in text, label
    assert "PPO-max's own overhead" in text
    assert "Command: `OMP_NUM_THREADS=1 python benchmarks/run.py" in text
    assert "Command: `OMP_NUM_THREADS=1 python benchmarks/learning.py" in text


def test_update_docs_replaces_only_the_marked_block(tmp_path):
    run = _load("run")
    start, end = run.DOCS_MARKERS
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{start}\nold table\n{end}\noutro\n")
    run.update_docs(page, "new table\n")
    assert page.read_text() == f"intro\n{start}\nnew table\n{end}\noutro\n"


def test_baton_runs_threads_in_turns():
    import threading

    common = _load("common")
    baton = common.Baton(["a", "b"])
    seen = []

    def worker(name, turns):
        for _ in range(turns):
            baton.acquire(name)
            seen.append(name)
            baton.release(name)
        baton.leave(name)

    threads = [threading.Thread(target=worker, args=("a", 3)), threading.Thread(target=worker, args=("b", 2))]
    for thread in threads:
        thread.start()
    baton.open()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == ["a", "b", "a", "b", "a"]
