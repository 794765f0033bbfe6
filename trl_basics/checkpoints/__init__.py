"""Crash-safe checkpoints and a resume that refuses to change the run silently.

- :mod:`~trl_basics.checkpoints.atomic`: atomic file and folder writes (temporary name, flush, fsync,
  ``os.replace``, fsync of the folder), and the no-op write points the tests stop a process at.
- :mod:`~trl_basics.checkpoints.marker`: the completion marker that lists every file with its size, a save's
  begin and end, rotation once the new checkpoint is complete, and which checkpoint a resume takes.
- :mod:`~trl_basics.checkpoints.trick_state`: the self-describing trick state file, the settings it records, and
  the reader that refuses a checkpoint that does not fit the run.
- :mod:`~trl_basics.checkpoints.disk_full`: a save that runs out of space ends with what is intact and what next.
- :mod:`~trl_basics.checkpoints.lock`: one run per output folder (an ``flock`` the OS drops with the process).

Each module imports only the ones listed before it. The names below are the package's interface.
"""

from .atomic import atomic_directory, atomic_write, fsync_directory, fsync_tree, write_json
from .disk_full import DISK_FULL_ERRNOS, DiskFullError, disk_full_cause, disk_full_error
from .lock import LOCK_FILE, OutputDirInUseError, RunLock, check_output_dir_free
from .marker import (
    MARKER_FILE,
    MARKER_VERSION,
    TRICK_STATE_FILE,
    CheckpointError,
    begin_checkpoint,
    checkpoint_files,
    checkpoint_problems,
    checkpoint_step,
    find_resumable_checkpoint,
    logged_training_loss,
    mark_complete,
    resolve_resume,
    rotate,
    run_is_finished,
)
from .trick_state import (
    MONITOR_SETTINGS,
    OPT_OUT,
    READABLE_VERSIONS,
    TRICK_STATE_FORMAT,
    TRICK_STATE_KEYS,
    TRICK_STATE_VERSION,
    ResumePlan,
    class_name,
    load_error,
    nonfinite_values,
    plan_trick_state,
    read_trick_state,
    run_settings,
    trick_state_document,
)

__all__ = [
    "DISK_FULL_ERRNOS",
    "LOCK_FILE",
    "MARKER_FILE",
    "MARKER_VERSION",
    "MONITOR_SETTINGS",
    "OPT_OUT",
    "READABLE_VERSIONS",
    "TRICK_STATE_FILE",
    "TRICK_STATE_FORMAT",
    "TRICK_STATE_KEYS",
    "TRICK_STATE_VERSION",
    "CheckpointError",
    "DiskFullError",
    "OutputDirInUseError",
    "ResumePlan",
    "RunLock",
    "atomic_directory",
    "atomic_write",
    "begin_checkpoint",
    "check_output_dir_free",
    "checkpoint_files",
    "checkpoint_problems",
    "checkpoint_step",
    "class_name",
    "disk_full_cause",
    "disk_full_error",
    "find_resumable_checkpoint",
    "fsync_directory",
    "fsync_tree",
    "load_error",
    "logged_training_loss",
    "mark_complete",
    "nonfinite_values",
    "plan_trick_state",
    "read_trick_state",
    "resolve_resume",
    "rotate",
    "run_is_finished",
    "run_settings",
    "trick_state_document",
    "write_json",
]
