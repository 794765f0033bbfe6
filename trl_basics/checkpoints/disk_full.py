"""A save that runs out of disk space ends the run with one message: which checkpoint, what is intact, what next.

The half-written checkpoint is removed (it has no completion marker, so a resume would never pick it anyway; if it
cannot be removed it stays without one). The message names the newest complete checkpoint, the one
``resume_from_checkpoint=True`` takes, or says there is none.
"""

from __future__ import annotations

import errno
import os
import shutil

from .marker import CheckpointError, find_resumable_checkpoint

# No space left on the device, and a disk quota exceeded: both end a save the same way.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFullError(CheckpointError):
    """A checkpoint could not be written for lack of space; the original ``OSError`` is its ``__cause__``."""


# How writers that do not raise ``OSError`` say it: safetensors (Rust: "No space left on device (os error 28)").
_MESSAGES = {errno.ENOSPC: ("no space left on device", "storagefull"), errno.EDQUOT: ("disk quota exceeded",)}
# torch.save's C++ writer does not name the cause ("file write failed", "unexpected pos 428800 vs 428692",
# "basic_ios::clear: iostream error", depending on where the stream broke): a failed save counts as a full disk when
# the disk holding the checkpoint has (almost) no space left, whatever the writer said.
_ALMOST_FULL = 2**20


def disk_full_cause(err: BaseException | None, folder: str | None = None) -> OSError | None:
    """The ``OSError`` with ``ENOSPC`` or ``EDQUOT`` in ``err`` or in what caused it, else ``None``.

    A writer's own exception that names one of them (safetensors, tokenizers) counts too, and so does any failure of
    a save into ``folder`` while its disk has less than 1 MiB free (``torch.save``'s C++ writer names no cause).
    """
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS:
            return err
        text = str(err).lower()
        for code, phrases in _MESSAGES.items():
            if any(phrase in text for phrase in phrases):
                return OSError(code, os.strerror(code))
        err = err.__cause__ or err.__context__
    if folder is not None and seen and _free_bytes(folder) < _ALMOST_FULL:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def _free_bytes(folder: str) -> int:
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 2**63


def disk_full_error(folder: str, cause: OSError, step: int, remove: bool = True) -> DiskFullError:
    """Remove the half-written ``folder`` (when ``remove``) and return the error that says what happened and what
    to do next."""
    what = os.strerror(cause.errno) if cause.errno is not None else str(cause)
    where = f" (writing {cause.filename})" if cause.filename else ""
    left = ""
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
    if os.path.exists(folder):
        left = " It has no completion marker, so no resume will pick it; delete it to free its space."
    else:
        left = " The incomplete checkpoint was removed."
    run_dir = os.path.dirname(os.path.normpath(folder))
    newest = find_resumable_checkpoint(run_dir)
    if newest is not None:
        intact = f"The newest complete checkpoint, {newest}, is intact."
        resume = (
            "Free space on that disk (or delete files you do not need, or lower save_total_limit), then resume: "
            "trainer.train(resume_from_checkpoint=True), or the same command with --resume_from_checkpoint latest."
        )
    else:
        intact = f"There is no complete checkpoint in {run_dir} yet, so there is nothing to resume from."
        resume = "Free space on that disk (or use an output_dir on another disk), then start the run again."
    return DiskFullError(
        f"{what} while saving checkpoint {folder} at step {step}{where}; the run stopped.{left} {intact} {resume}"
    )
