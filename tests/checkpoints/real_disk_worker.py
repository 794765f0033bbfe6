"""Saves on a disk that is really full: a tmpfs mounted in a private mount namespace (``unshare -rm``, no root
needed) and shrunk so that the next checkpoint does not fit. Every writer fails as it would on a real disk,
tokenizers' Rust ``tokenizer.json`` writer and safetensors included, not only the Python ones a test can patch.

    unshare -rm python real_disk_worker.py MODEL_DIR WORK_DIR REPORT PAGES [PAGES ...]

For each PAGES: copy a run that has checkpoint-1 onto a fresh tmpfs, leave PAGES free 4 KiB pages, resume to step 2
(its save fails), record what happened, grow the disk and resume again. The report is JSON, one entry per PAGES.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers

from helpers import cpu_kwargs

import trl_basics as tb
from trl_basics import checkpoints
from trl_basics.kit.tasks import get_task

PAGE = 4096


def trainer(model_dir: str, output_dir: Path, max_steps: int) -> tb.RLOOTrainer:
    task = get_task("token_kind")
    config = tb.RLOOConfig(
        **cpu_kwargs(
            output_dir,
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=1,
            save_total_limit=1,
            lr_scheduler_type="constant",
        ),
        beta=0.0,
        kl_coef=0.05,
        reward_norm="running",
    )
    return tb.RLOOTrainer(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=task.make_dataset(64, seed=0)
    )


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def mount(point: Path, size: int, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size}"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)


def one_case(model_dir: str, seed_run: Path, point: Path, pages: int) -> dict:
    mount(point, 64 * 2**20)
    try:
        run = point / "run"
        shutil.copytree(seed_run, run)
        first, second = run / "checkpoint-1", run / "checkpoint-2"
        before = digest(first)
        stat = os.statvfs(point)
        used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        mount(point, used + pages * PAGE, remount=True)
        case: dict = {"pages": pages}
        try:
            trainer(model_dir, run, max_steps=2).train(resume_from_checkpoint=True)
            case["error"] = None
        except Exception as error:  # noqa: BLE001 - the report says what it was
            case["error"] = type(error).__name__
            case["message"] = str(error)
            case["cause"] = repr(error.__cause__)[:300]
            case["writer"] = traceback.extract_tb(error.__cause__.__traceback__)[-1].name if error.__cause__ else None
            case["traceback"] = traceback.format_exc()[-3000:]
        case["second_exists"] = second.exists()
        case["resumable"] = checkpoints.find_resumable_checkpoint(str(run))
        case["first_problems"] = checkpoints.checkpoint_problems(str(first))
        case["first_intact"] = digest(first) == before
        mount(point, 64 * 2**20, remount=True)  # space again
        resumed = trainer(model_dir, run, max_steps=2)
        resumed.train(resume_from_checkpoint=True)
        case["resumed_step"] = resumed.state.global_step
        case["resumed_to"] = checkpoints.find_resumable_checkpoint(str(run))
        case["weights"] = digest(run / "checkpoint-2").get("model.safetensors")
        return case
    finally:
        subprocess.run(["umount", str(point)], check=False)


def main(model_dir: str, work_dir: str, report: str, *pages: str) -> None:
    torch.set_num_threads(1)
    work = Path(work_dir)
    seed_run = work / "seed"
    trainer(model_dir, seed_run, max_steps=1).train()
    reference = work / "reference"
    trainer(model_dir, reference, max_steps=2).train()
    point = work / "disk"
    point.mkdir()
    cases = [one_case(model_dir, seed_run, point, int(count)) for count in pages]
    result = {"reference_weights": digest(reference / "checkpoint-2")["model.safetensors"], "cases": cases}
    Path(report).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
