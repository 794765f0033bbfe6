"""Which checkpoint folders are complete, how a save makes one complete, and which one a resume takes.

A checkpoint folder is **complete** only once ``trl_basics_complete.json`` is in it. The marker is written last,
after every file (TRL's, transformers' and ours) has been written and fsynced, and before older checkpoints are
rotated away. It lists every file of the checkpoint with its size, so a file that is missing or was truncated
afterwards is noticed too.

On resume, ``resume_from_checkpoint=True`` takes the newest complete checkpoint of ``output_dir`` and logs one line
per incomplete one it passes over; an explicit path to an incomplete checkpoint is refused, naming what is missing.

A save passes the points ``checkpoint:begin`` (a save starts; any old marker is gone), ``checkpoint:saved`` (every
file written, no marker yet) and ``checkpoint:marked`` (marker written, older checkpoints not yet rotated) to
:func:`trl_basics.checkpoints.atomic._reached`, which does nothing (see :mod:`trl_basics.checkpoints.atomic`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from . import atomic
from .atomic import fsync_directory, fsync_tree, is_temp, write_json

logger = logging.getLogger("trl_basics.checkpoints")

MARKER_FILE = "trl_basics_complete.json"
MARKER_VERSION = 1
TRICK_STATE_FILE = "trl_basics_tricks.json"  # its format: trl_basics.checkpoints.trick_state
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed as asked; the message names the file, the problem and the options."""


# --- one save ---------------------------------------------------------------------------------------------------------


def checkpoint_files(folder: str) -> dict[str, int]:
    """Every file under ``folder`` (temporary files and the marker aside) with its size in bytes, by relative path."""
    files = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_temp(d))
        for name in sorted(names):
            if is_temp(name) or (root == folder and name == MARKER_FILE):
                continue
            full = os.path.join(root, name)
            files[os.path.relpath(full, folder).replace(os.sep, "/")] = os.path.getsize(full)
    return files


def begin_checkpoint(folder: str) -> None:
    """Before anything of a save is written: an old marker in ``folder`` goes first, then leftover temporary files.

    A save into an existing folder (training again from an older checkpoint) thus never looks complete while its
    files are being overwritten.
    """
    marker = os.path.join(folder, MARKER_FILE)
    if os.path.exists(marker):
        os.remove(marker)
        fsync_directory(folder)
    if os.path.isdir(folder):
        for root, dirs, names in os.walk(folder):
            for name in [*names, *dirs]:
                if is_temp(name):
                    full = os.path.join(root, name)
                    shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
    atomic._reached("checkpoint:begin")


def mark_complete(folder: str, global_step: int) -> None:
    """Everything of the save is written: fsync it all, then write the marker that lists each file with its size."""
    atomic._reached("checkpoint:saved")
    fsync_tree(folder)
    fsync_directory(os.path.dirname(os.path.abspath(folder)))  # the folder's own entry in the run folder
    marker = {"format_version": MARKER_VERSION, "global_step": int(global_step), "files": checkpoint_files(folder)}
    write_json(os.path.join(folder, MARKER_FILE), marker)
    atomic._reached("checkpoint:marked")


def rotate(run_dir: str, folder: str, save_total_limit: int | None, best_model_checkpoint: str | None) -> None:
    """Rotate old checkpoints with transformers' own function, once ``folder`` is complete.

    Incomplete checkpoints of later steps than ``folder`` (left by a run that was killed and resumed from an earlier
    checkpoint) are removed first, each logged: they cannot be resumed, and transformers, ordering by step when
    modification times are close, would otherwise keep one of them as "the most recent" and delete ``folder``.
    """
    from transformers.trainer_utils import rotate_checkpoints

    if not save_total_limit or save_total_limit <= 0:
        return
    step = _step_of(folder)
    for name, later in _checkpoint_dirs(run_dir):
        path = os.path.join(run_dir, name)
        if step is not None and later > step and checkpoint_problems(path):
            logger.warning("Removing incomplete checkpoint %s (a later step than %s, which replaces it)", path, folder)
            shutil.rmtree(path, ignore_errors=True)
    rotate_checkpoints(
        output_dir=run_dir,
        save_total_limit=save_total_limit,
        best_model_checkpoint=best_model_checkpoint,
        use_mtime=True,
    )


# --- which checkpoint ---------------------------------------------------------------------------------------------------


def _step_of(path: str) -> int | None:
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def _checkpoint_dirs(run_dir: str) -> list[tuple[str, int]]:
    """``checkpoint-N`` folders of ``run_dir``, newest step first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        step = _step_of(name)
        if step is not None and os.path.isdir(os.path.join(run_dir, name)):
            found.append((name, step))
    return sorted(found, key=lambda item: -item[1])


def checkpoint_problems(folder: str) -> list[str]:
    """What keeps ``folder`` from being a complete checkpoint; empty if it is one."""
    if not os.path.exists(folder):
        return ["it does not exist"]
    if not os.path.isdir(folder):
        return ["it is not a folder"]
    marker_path = os.path.join(folder, MARKER_FILE)
    if not os.path.exists(marker_path):
        problems = [f"it has no {MARKER_FILE}, so its save did not finish"]
        missing = [
            name for name in ("trainer_state.json", TRICK_STATE_FILE) if not os.path.exists(os.path.join(folder, name))
        ]
        if missing:
            problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
        partial = sorted(
            os.path.relpath(os.path.join(root, name), folder)
            for root, dirs, names in os.walk(folder)
            for name in [*names, *dirs]
            if is_temp(name)
        )
        if partial:
            problems.append(f"partly written: {', '.join(partial)}")
        return problems
    try:
        with open(marker_path, encoding="utf-8") as f:
            marker = json.load(f)
        files = marker["files"]
        if not isinstance(files, dict):
            raise TypeError("'files' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return [f"its {MARKER_FILE} is unreadable ({type(err).__name__}: {err})"]
    problems = []
    for name, size in sorted(files.items()):
        path = os.path.join(folder, *name.split("/"))
        if not os.path.isfile(path):
            problems.append(f"{name} is missing")
        elif os.path.getsize(path) != size:
            problems.append(f"{name} has {os.path.getsize(path)} bytes, {size} when it was saved")
    return problems


def checkpoint_step(folder: str) -> int:
    """The optimizer step a complete checkpoint was saved at (its completion marker's)."""
    with open(os.path.join(folder, MARKER_FILE), encoding="utf-8") as f:
        return int(json.load(f)["global_step"])


def run_is_finished(folder: str, max_steps: int) -> bool:
    """Whether the complete checkpoint ``folder`` was saved at or past ``max_steps`` (> 0): resuming from it has no
    step left to take."""
    return max_steps > 0 and checkpoint_step(folder) >= max_steps


def logged_training_loss(log_history: list[dict]) -> float:
    """The training loss of a finished run, rebuilt from its ``log_history``: the run's own ``train_loss`` where it
    was logged, else the mean loss per step over the logged steps (each logged ``loss`` is the mean of the steps
    since the previous log, so it is weighted by their number). That equals transformers' end-of-run figure when the
    last step was logged; steps after the last log are not in the history. NaN only when no loss was logged."""
    finals = [entry["train_loss"] for entry in log_history if "train_loss" in entry]
    if finals:
        return float(finals[-1])
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry and entry["step"] > last:
            total += float(entry["loss"]) * (entry["step"] - last)
            steps += entry["step"] - last
            last = entry["step"]
    return total / steps if steps else float("nan")


def find_resumable_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint in ``output_dir``, or ``None``. Logs one line per incomplete one passed over."""
    for name, _ in _checkpoint_dirs(output_dir):
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path)
        if not problems:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s", path, "; ".join(problems))
    return None


def older_complete(folder: str) -> str | None:
    """The newest complete checkpoint of ``folder``'s run folder before ``folder`` (any, if it has no step), or
    ``None``."""
    run_dir = os.path.dirname(os.path.normpath(folder))
    step = _step_of(folder)
    for name, other in _checkpoint_dirs(run_dir):
        path = os.path.join(run_dir, name)
        if (step is None or other < step) and not checkpoint_problems(path):
            return path
    return None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint to resume from: ``True`` picks the newest complete one, a path must be complete itself."""
    if resume_from_checkpoint is None or resume_from_checkpoint is False:
        return None
    if resume_from_checkpoint is True:
        found = find_resumable_checkpoint(output_dir)
        if found is None:
            incomplete = len(_checkpoint_dirs(output_dir))
            detail = f"{incomplete} incomplete one(s) skipped, see the log above" if incomplete else "none at all"
            raise CheckpointError(
                f"resume_from_checkpoint=True, but {output_dir} holds no complete checkpoint ({detail}). "
                "Start without resume_from_checkpoint, or point it at a complete checkpoint folder."
            )
        logger.info("Resuming from %s, the newest complete checkpoint in %s", found, output_dir)
        return found
    folder = os.fspath(resume_from_checkpoint)
    problems = checkpoint_problems(folder)
    if problems:
        older = older_complete(folder)
        raise CheckpointError(
            f"Cannot resume from {folder}: the checkpoint is incomplete: {'; '.join(problems)}. "
            + (f"Options: resume from {older}, the newest complete checkpoint before it; " if older else "Options: ")
            + "resume_from_checkpoint=True picks the newest complete checkpoint of output_dir; or start afresh in a "
            "new output_dir."
        )
    return folder
