"""A disk that is really full (a small tmpfs in a private mount namespace, see ``real_disk_worker.py``): the save of
checkpoint-2 runs out of space at a different write each time, from the first file to the last, in every writer
(Python's, safetensors', tokenizers' Rust ``tokenizer.json`` writer, ``torch.save``'s C++ one). Each time the run
ends with the one disk-full message, checkpoint-1 is intact and is what a resume takes, and once there is space the
resumed run saves the checkpoint-2 the uninterrupted run saved, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("real_disk_worker.py")
# Free 4 KiB pages left before the save of checkpoint-2: 0 fails at its first file (config.json); then inside the
# weights (safetensors), at the chat template, the tokenizer files (tokenizer.json is written by Rust), the
# training arguments, inside the optimizer state, and at the last files (rng state, trainer state, trick state).
PAGES = (0, 86, 88, 89, 90, 93, 200, 265, 268, 270)
WRITERS = {"safetensors": "save_file", "tokenizers (Rust)": "_save_pretrained", "json": "to_json_file"}


@pytest.mark.slow
def test_a_real_full_disk_at_every_stage_of_a_save(tmp_path, tiny_model_dir):
    unshare = shutil.which("unshare")
    assert unshare, "the test needs util-linux's unshare (a private mount namespace for a small tmpfs)"
    report = tmp_path / "report.json"
    command = [unshare, "-rm", sys.executable, str(WORKER), tiny_model_dir, str(tmp_path / "work"), str(report)]
    result = subprocess.run([*command, *map(str, PAGES)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    found = json.loads(report.read_text())

    run = tmp_path / "work" / "disk" / "run"
    first, second = run / "checkpoint-1", run / "checkpoint-2"
    writers = set()
    for case in found["cases"]:
        where = f"{case['pages']} free pages"
        assert case["error"] == "DiskFullError", (where, case.get("traceback"))
        assert case["message"].startswith(f"No space left on device while saving checkpoint {second} at step 2"), where
        assert f"The newest complete checkpoint, {first}, is intact." in case["message"], where
        assert not case["second_exists"], where  # the half-written folder is gone
        assert case["resumable"] == str(first), where
        assert case["first_problems"] == [] and case["first_intact"], where
        assert case["resumed_step"] == 2 and case["resumed_to"] == str(second), where
        assert case["weights"] == found["reference_weights"], where  # the resumed run continued exactly
        writers.add(case["writer"])
    # The failures really hit the writers a patched `open` cannot see.
    for name, function in WRITERS.items():
        assert function in writers, (name, writers)


@pytest.mark.slow
def test_a_full_disk_in_a_two_process_run_ends_it_and_resumes(tmp_path, tiny_model_dir):
    """Process 0 runs out of space saving checkpoint-2 while process 1 waits for it in the save: the run ends (no
    hang), with the disk-full message, checkpoint-1 intact; resumed with space, both processes finish the run."""
    from distributed.test_two_processes import free_port  # tests/ is on sys.path

    unshare = shutil.which("unshare")
    assert unshare, "the test needs util-linux's unshare (a private mount namespace for a small tmpfs)"
    script, worker = Path(__file__).with_name("full_disk_two_processes.sh"), Path(__file__).with_name("full_disk_worker.py")
    report, disk = tmp_path / "report", tmp_path / "disk"
    report.mkdir()
    command = [unshare, "-rm", "bash", str(script), sys.executable, str(worker), tiny_model_dir, str(disk), str(report)]
    result = subprocess.run([*command, str(free_port()), str(free_port())], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]

    first_err = (report / "first.err").read_text()
    assert (report / "first.rc").read_text().strip() not in ("0", "124"), first_err[-3000:]  # failed, not hung
    assert (
        f"DiskFullError: No space left on device while saving checkpoint {disk / 'run' / 'checkpoint-2'} at step 2"
        in first_err
    ), first_err[-3000:]
    assert (report / "after_first.ls").read_text().split() == ["README.md", "checkpoint-1"]
    assert (report / "resumable").read_text().strip() == str(disk / "run" / "checkpoint-1")

    second_err = (report / "second.err").read_text()
    assert (report / "second.rc").read_text().strip() == "0", second_err[-3000:]
    assert "checkpoint-3" in (report / "after_second.ls").read_text().split()
