"""Stop a process with SIGKILL at one of trl_basics' named write points.

trl_basics' write path calls ``trl_basics.checkpoints.atomic._reached(point)`` at every write point (listed in that
module's docstring), and that function does nothing. :func:`install` replaces it in the current process, so that
the process kills itself the N-th time (default: the first) it reaches the point named by ``POINT`` or ``POINT@N``.
Install it only in a child process (see ``conftest.fork``), never in the test process itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import IO

from trl_basics.checkpoints import atomic


def counter(spec: str) -> Callable[[str], bool]:
    """For ``POINT`` or ``POINT@N``: a function that counts the points reached and says when the N-th ``POINT`` is."""
    name, _, nth = spec.partition("@")
    target = int(nth or 1)
    hits = 0

    def due(point: str) -> bool:
        nonlocal hits
        if point != name:
            return False
        hits += 1
        return hits == target

    return due


def install(spec: str) -> None:
    """From now on, this process dies by SIGKILL at the write point ``spec`` names (see :func:`counter`).

    At ``LABEL:partial`` the temporary file is first cut to half of what was written, as a kill in the middle of
    the write would leave it.
    """
    due = counter(spec)

    def reached(point: str, handle: IO | None = None) -> None:
        if not due(point):
            return
        if handle is not None:
            handle.truncate(max(handle.tell() // 2, 0))
            handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    atomic._reached = reached
