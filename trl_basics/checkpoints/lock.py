"""One training run per output folder: a lock the operating system releases when the run's process dies.

The main process of a run (the one that saves) holds ``output_dir/.trl_basics.lock`` open with an exclusive
``fcntl.flock`` for as long as ``train`` runs, and writes its process id, host and start time into it. A second run
on the same folder (another process, or a second trainer in the same process: ``flock`` locks belong to an open
file, not to a process) fails to take the lock and is refused with the holder's details. The file's content is only
read when the lock is held by someone, so what a killed run left in it is never taken for a live holder: the kernel
drops the lock with the process, whatever ``kill -9`` leaves on disk.

Limits: ``flock`` is advisory (only runs that take the lock see it) and on network file systems (NFS, some FUSE
mounts) it may not be enforced across machines. Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Self

from .marker import CheckpointError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_FILE = ".trl_basics.lock"
_ATTEMPTS = 10


class OutputDirInUseError(CheckpointError):
    """Another live run holds ``output_dir``; the message names it and the ways forward."""


def _holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            fields = dict(line.split("=", 1) for line in handle.read().splitlines() if "=" in line)
    except (OSError, ValueError):
        fields = {}
    if not fields.get("pid"):
        return "a run that is starting (its process id is not written yet)"
    pid, host = fields["pid"], fields.get("host", "?")
    own = " (this process)" if pid == str(os.getpid()) and host == socket.gethostname() else ""
    return f"process {pid}{own} on host {host}, started {fields.get('started', '?')}"


def holder_message(output_dir: str, path: str) -> str:
    holder = _holder(path)
    return (
        f"output_dir {output_dir} is in use by another training run: {holder} (lock file {path}). Two runs in one "
        "output_dir would mix their checkpoints. Wait for that run to finish, stop it, or use another output_dir "
        "(--output_dir)."
    )


class RunLock:
    """The exclusive lock of one ``output_dir``; ``acquire`` raises :class:`OutputDirInUseError` when it is held."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = str(output_dir)
        self.path = os.path.join(self.output_dir, LOCK_FILE)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if fcntl is None or self._fd is not None:
            return self
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            for attempt in range(_ATTEMPTS):  # a probe (`check_output_dir_free`) holds it for an instant only
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == _ATTEMPTS - 1:
                        raise OutputDirInUseError(holder_message(self.output_dir, self.path)) from None
                    time.sleep(0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        record = f"pid={os.getpid()}\nhost={socket.gethostname()}\nstarted={started}\n".encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
        except OSError:
            # A full disk cannot take the record; the kernel's lock holds all the same, and a second run is refused
            # as "starting". The run goes on: its saves say what a full disk means for them.
            pass
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # no holder: the file stays (removing it would race with a run that opens it now)
        except OSError:
            pass
        finally:
            os.close(fd)  # closing the last descriptor of the open file releases the lock

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_output_dir_free(output_dir: str) -> None:
    """Refuse at once when a live run holds ``output_dir`` (a probe, e.g. before a model loads; ``train`` locks)."""
    path = os.path.join(str(output_dir), LOCK_FILE)
    if fcntl is None or not os.path.exists(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputDirInUseError(holder_message(str(output_dir), path)) from None
    finally:
        os.close(fd)
