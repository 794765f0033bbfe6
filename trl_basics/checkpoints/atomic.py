"""Atomic file and folder writes: a temporary name, flush, fsync, ``os.replace`` into place, fsync of the folder.

A kill at any instant leaves the old file (or none) or the new one, never a partial one. The leftover temporary file
(``.NAME.tmp-PID``, or a folder of that name) is recognised by :func:`is_temp` and ignored or removed by the callers.

Every write passes named points to :func:`_reached`, which does nothing: ``LABEL:partial`` (half of the temporary
file written), ``LABEL:written`` (temporary file or folder complete, not yet fsynced), ``LABEL:synced`` (fsynced, not
yet in place) and ``LABEL:replaced`` (in place, folder not yet fsynced). ``LABEL`` is the label given to the writer,
by default the file's name; trl_basics uses ``trl_basics_tricks.json``, ``trl_basics_complete.json``, ``critic`` and
``critic/optimizer.pt``. The save itself adds ``checkpoint:begin``, ``checkpoint:saved`` and ``checkpoint:marked``
(:mod:`trl_basics.checkpoints.marker`). The tests replace :func:`_reached` in a child process to kill it with SIGKILL
at one of these points; nothing in trl_basics reads a setting or an environment variable for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

_TEMP_RE = re.compile(r"^\..+\.tmp-\d+$")
_OLD_TEMP_RE = re.compile(r"^\..+\.tmp-\d+\.old$")


def _reached(point: str, handle: IO | None = None) -> None:
    """Nothing happens here; tests replace this to stop the process at a write point.

    ``handle`` is the temporary file at ``LABEL:partial`` (so that a test can cut it short), ``None`` elsewhere.
    """


def temp_name(path: str) -> str:
    """The temporary name ``path`` is written under: ``.NAME.tmp-PID`` in the same folder."""
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}")


def is_temp(name: str) -> bool:
    """Whether ``name`` (a file or folder name, no path) is a temporary name of an unfinished write."""
    return bool(_TEMP_RE.match(name)) or bool(_OLD_TEMP_RE.match(name))


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """fsync every file and folder under ``folder`` (what transformers writes is not fsynced by it)."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(root)


@contextmanager
def atomic_write(path: str, mode: str = "wb", label: str | None = None) -> Iterator[IO]:
    """Write ``path`` all at once: the file is either absent (or its old version) or complete, never partial.

    Yields a file open on a temporary name in the same folder; on a clean exit it is flushed, fsynced, moved over
    ``path`` with ``os.replace`` and the folder fsynced. On an exception the temporary file is removed.
    """
    label = label or os.path.basename(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temp = temp_name(path)
    handle = open(temp, mode)  # noqa: SIM115 (closed below, on every path)
    try:
        yield handle
        handle.flush()
        _reached(f"{label}:partial", handle)
        _reached(f"{label}:written")
        os.fsync(handle.fileno())
    except BaseException:
        handle.close()
        with suppress(OSError):
            os.unlink(temp)
        raise
    handle.close()
    _reached(f"{label}:synced")
    os.replace(temp, path)
    _reached(f"{label}:replaced")
    fsync_directory(os.path.dirname(path) or ".")


def write_json(path: str, obj: Any, label: str | None = None) -> None:
    """``json.dump`` through :func:`atomic_write`."""
    text = json.dumps(obj, indent=1, sort_keys=True)
    with atomic_write(path, "w", label=label) as f:
        f.write(text)


@contextmanager
def atomic_directory(path: str, label: str | None = None) -> Iterator[str]:
    """Fill a folder under a temporary name, then put it in place of ``path`` (any old folder there is removed)."""
    label = label or os.path.basename(path)
    temp = temp_name(path)
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp)
    try:
        yield temp
        _reached(f"{label}:written")
        fsync_tree(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    _reached(f"{label}:synced")
    if os.path.lexists(path):
        old = f"{temp}.old"
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(temp, path)
    _reached(f"{label}:replaced")
    fsync_directory(os.path.dirname(path) or ".")
