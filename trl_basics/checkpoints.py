"""Crash-safe checkpoints and a resume that refuses to change the run silently.

A checkpoint folder is **complete** only once ``trl_basics_complete.json`` is in it. The marker is written last,
after every file (TRL's, transformers' and ours) has been written and fsynced, and before older checkpoints are
rotated away. It lists every file of the checkpoint with its size, so a file that is missing or was truncated
afterwards is noticed too. Files trl_basics writes itself go through :func:`atomic_write` (or
:func:`atomic_directory`): a temporary name, flush, fsync, ``os.replace`` into place, fsync of the folder.

On resume, ``resume_from_checkpoint=True`` takes the newest complete checkpoint of ``output_dir`` and logs one line
per incomplete one it passes over; an explicit path to an incomplete checkpoint is refused, naming what is missing.

The trick state file ``trl_basics_tricks.json`` describes itself: the trainer class, the trl_basics version, a format
version and the value of every setting the saved state depends on. :func:`read_trick_state` refuses a different
trainer class, changed settings (each named old → new), non-finite numbers and damaged files, each with the options
to proceed; ``resume_reset_changed_state=True`` starts the trick state fresh instead (logged) for every refusal except
a different trainer class.

Test hook: with the environment variable ``TRL_BASICS_TEST_KILL_AT`` set to ``POINT`` or ``POINT@N``, the process
kills itself with SIGKILL the N-th time (default: the first) it reaches the write point ``POINT``. Points are
``checkpoint:begin`` (a save starts; any old marker is gone), ``checkpoint:saved`` (every file written, no marker
yet), ``checkpoint:marked`` (marker written, older checkpoints not yet rotated), and for every file or folder
written here ``LABEL:partial`` (half of the temporary file written), ``LABEL:written`` (temporary file or folder
complete, not yet fsynced), ``LABEL:synced`` (fsynced, not yet in place) and ``LABEL:replaced`` (in place, folder not
yet fsynced). Labels: ``trl_basics_tricks.json``, ``trl_basics_complete.json``, ``critic`` and
``critic/optimizer.pt``. The hook does nothing unless the variable is set.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

logger = logging.getLogger(__name__)

MARKER_FILE = "trl_basics_complete.json"
TRICK_STATE_FILE = "trl_basics_tricks.json"
TRICK_STATE_FORMAT = "trl_basics.trick_state"
TRICK_STATE_VERSION = 2
MARKER_VERSION = 1
KILL_ENV = "TRL_BASICS_TEST_KILL_AT"
OPT_OUT = "resume_reset_changed_state"
TRICK_STATE_KEYS = ("format", "format_version", "trl_basics_version", "trainer_class", "settings", "state")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TEMP_RE = re.compile(r"^\..+\.tmp-\d+$")

# Settings outside TrickArguments that the saved state (or what it means) depends on, recorded when the config has
# them: the KL and group settings of the TRL parents, RLOO's knobs that feed the pipeline, REINFORCE++'s baseline
# and PPO-max's critic.
EXTRA_SETTINGS = (
    "beta",
    "num_generations",
    "normalize_advantages",
    "reward_clip_range",
    "baseline",
    "critic_model_path",
    "critic_init",
    "critic_learning_rate",
    "critic_max_grad_norm",
    "critic_warmup_steps",
    "value_clip",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed as asked; the message names the file, the problem and the options."""


# --- test hook ------------------------------------------------------------------------------------------------------

_kill_counts: dict[str, int] = {}


def _kill_due(point: str) -> bool:
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return False
    name, _, nth = spec.partition("@")
    if name != point:
        return False
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    return _kill_counts[point] == int(nth or 1)


def kill_point(point: str) -> None:
    """SIGKILL this process here if ``TRL_BASICS_TEST_KILL_AT`` names this point (test hook, see the module doc)."""
    if _kill_due(point):
        os.kill(os.getpid(), signal.SIGKILL)


# --- atomic writes --------------------------------------------------------------------------------------------------


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.tmp-{os.getpid()}")


@contextmanager
def atomic_write(path: str, mode: str = "wb", label: str | None = None) -> Iterator[IO]:
    """Write ``path`` all at once: the file is either absent (or its old version) or complete, never partial.

    Yields a file open on a temporary name in the same folder; on a clean exit it is flushed, fsynced, moved over
    ``path`` with ``os.replace`` and the folder fsynced. On an exception the temporary file is removed.
    """
    label = label or os.path.basename(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    temp = _temp_name(path)
    handle = open(temp, mode)  # noqa: SIM115 (closed below, on every path)
    try:
        yield handle
        handle.flush()
        if _kill_due(f"{label}:partial"):
            handle.truncate(max(handle.tell() // 2, 0))
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        kill_point(f"{label}:written")
        os.fsync(handle.fileno())
    except BaseException:
        handle.close()
        with suppress(OSError):
            os.unlink(temp)
        raise
    handle.close()
    kill_point(f"{label}:synced")
    os.replace(temp, path)
    kill_point(f"{label}:replaced")
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
    temp = _temp_name(path)
    shutil.rmtree(temp, ignore_errors=True)
    os.makedirs(temp)
    try:
        yield temp
        kill_point(f"{label}:written")
        fsync_tree(temp)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    kill_point(f"{label}:synced")
    if os.path.lexists(path):
        old = f"{temp}.old"
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(temp, path)
    kill_point(f"{label}:replaced")
    fsync_directory(os.path.dirname(path) or ".")


def _is_temp(name: str) -> bool:
    return bool(_TEMP_RE.match(name)) or bool(re.match(r"^\..+\.tmp-\d+\.old$", name))


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


def checkpoint_files(folder: str) -> dict[str, int]:
    """Every file under ``folder`` (temporary files and the marker aside) with its size in bytes, by relative path."""
    files = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _is_temp(d))
        for name in sorted(names):
            if _is_temp(name) or (root == folder and name == MARKER_FILE):
                continue
            full = os.path.join(root, name)
            files[os.path.relpath(full, folder).replace(os.sep, "/")] = os.path.getsize(full)
    return files


# --- one save ---------------------------------------------------------------------------------------------------------


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
                if _is_temp(name):
                    full = os.path.join(root, name)
                    shutil.rmtree(full, ignore_errors=True) if os.path.isdir(full) else os.remove(full)
    kill_point("checkpoint:begin")


def mark_complete(folder: str, global_step: int) -> None:
    """Everything of the save is written: fsync it all, then write the marker that lists each file with its size."""
    kill_point("checkpoint:saved")
    fsync_tree(folder)
    fsync_directory(os.path.dirname(os.path.abspath(folder)))  # the folder's own entry in the run folder
    marker = {"format_version": MARKER_VERSION, "global_step": int(global_step), "files": checkpoint_files(folder)}
    write_json(os.path.join(folder, MARKER_FILE), marker)
    kill_point("checkpoint:marked")


@contextmanager
def rotation_deferred(args: Any) -> Iterator[int | None]:
    """Hold back transformers' rotation during its ``_save_checkpoint``; yields the ``save_total_limit`` to apply.

    ``Trainer._save_checkpoint`` ends with ``rotate_checkpoints(save_total_limit=self.args.save_total_limit, ...)``,
    which deletes nothing when the limit is ``None``. The caller rotates with :func:`rotate` once its checkpoint is
    complete.
    """
    limit = args.save_total_limit
    args.save_total_limit = None
    try:
        yield limit
    finally:
        args.save_total_limit = limit


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
            if _is_temp(name)
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


def find_resumable_checkpoint(output_dir: str) -> str | None:
    """The newest complete checkpoint in ``output_dir``, or ``None``. Logs one line per incomplete one passed over."""
    for name, _ in _checkpoint_dirs(output_dir):
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path)
        if not problems:
            return path
        logger.warning("Skipping incomplete checkpoint %s: %s", path, "; ".join(problems))
    return None


def _older_complete(folder: str) -> str | None:
    run_dir = os.path.dirname(os.path.normpath(folder))
    step = _step_of(folder)
    for name, other in _checkpoint_dirs(run_dir):
        path = os.path.join(run_dir, name)
        if (step is None or other < step) and not checkpoint_problems(path):
            return path
    return None


def _options(folder: str, opt_out: bool) -> str:
    older = _older_complete(folder)
    options = [
        f"resume from an older complete checkpoint ({older})" if older else "resume from an older complete checkpoint",
    ]
    if opt_out:
        options.append(
            f"set {OPT_OUT}=True to start the trick state fresh (model, optimizer, scheduler, RNG and step still resume)"
        )
    options.append("or start afresh in a new output_dir")
    return "Options: " + "; ".join(options) + "."


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
        older = _older_complete(folder)
        raise CheckpointError(
            f"Cannot resume from {folder}: the checkpoint is incomplete: {'; '.join(problems)}. "
            + (f"Options: resume from {older}, the newest complete checkpoint before it; " if older else "Options: ")
            + "resume_from_checkpoint=True picks the newest complete checkpoint of output_dir; or start afresh in a "
            "new output_dir."
        )
    return folder


# --- trick state --------------------------------------------------------------------------------------------------------


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, unknown objects their repr)."""
    return json.loads(json.dumps(value, default=repr))


# The collapse alarm only watches the run (its windows start afresh on resume), so it may change across a resume.
MONITOR_SETTINGS = ("collapse_alarm", "collapse_alarm_window")


def run_settings(args: Any, estimator: str | None) -> dict[str, Any]:
    """The settings the saved trick state depends on: every trick flag, the estimator in use and ``EXTRA_SETTINGS``."""
    import dataclasses

    from .config import TrickArguments

    excluded = {OPT_OUT, *MONITOR_SETTINGS}
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrickArguments) if f.name not in excluded}
    settings["advantage_estimator"] = estimator
    for name in EXTRA_SETTINGS:
        if hasattr(args, name):
            settings[name] = getattr(args, name)
    return _plain(settings)


def trick_state_document(trainer_class: type, settings: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    return {
        "format": TRICK_STATE_FORMAT,
        "format_version": TRICK_STATE_VERSION,
        "trl_basics_version": __version__,
        "trainer_class": class_name(trainer_class),
        "settings": settings,
        "state": state,
    }


def nonfinite_values(value: Any, path: str = "") -> list[str]:
    """Where ``value`` (nested dicts and lists) holds NaN or ±inf, as ``a.b.c = nan``."""
    if isinstance(value, dict):
        return [
            found for key, item in value.items() for found in nonfinite_values(item, f"{path}.{key}" if path else key)
        ]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in nonfinite_values(item, f"{path}[{i}]")]
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path} = {value}"]
    return []


class _BadFile(Exception):
    """What is wrong with a state file, phrased to follow its path."""


def _parse_trick_state(path: str) -> dict[str, Any]:
    """The document in ``path``; raises ``_BadFile`` with what is wrong with the file."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise _BadFile("is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _BadFile(f"is not text (binary data at byte {err.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise _BadFile(
            f"is not valid JSON, it is truncated or damaged ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise _BadFile(f"holds a JSON {type(doc).__name__} where an object is expected")
    missing = [key for key in TRICK_STATE_KEYS if key not in doc]
    if missing:
        raise _BadFile(f"lacks the key(s) {', '.join(missing)}")
    if doc["format"] != TRICK_STATE_FORMAT or doc["format_version"] != TRICK_STATE_VERSION:
        raise _BadFile(
            f"has format {doc['format']!r} version {doc['format_version']!r}; this trl_basics reads "
            f"{TRICK_STATE_FORMAT!r} version {TRICK_STATE_VERSION}"
        )
    for key, kind in (("trainer_class", str), ("settings", dict), ("state", dict)):
        if not isinstance(doc[key], kind):
            raise _BadFile(f"has {key} of type {type(doc[key]).__name__}, expected {kind.__name__}")
    bad = sorted(name for name, component in doc["state"].items() if not isinstance(component, dict))
    if bad:
        raise _BadFile(f"has state for {', '.join(bad)} that is not an object")
    return doc


def read_trick_state(
    folder: str,
    *,
    trainer_class: type,
    settings: dict[str, Any],
    stateful: list[str],
    reset: bool,
) -> dict[str, Any] | None:
    """The trick state to load from checkpoint ``folder``, or ``None`` to start it fresh.

    ``stateful`` names this run's components that keep state (a missing file is refused only for such a run);
    ``reset`` is ``resume_reset_changed_state``. Raises :class:`CheckpointError` for every refusal.
    """
    path = os.path.join(folder, TRICK_STATE_FILE)

    def refused(problem: str) -> None:
        if reset:
            logger.warning(
                "%s=True: %s %s; the trick state starts fresh (the model, optimizer, scheduler, RNG and step resume "
                "from %s)",
                OPT_OUT,
                path,
                problem,
                folder,
            )
            return
        raise CheckpointError(f"Cannot resume from {folder}: {path} {problem}. {_options(folder, opt_out=True)}")

    if not os.path.exists(path):
        if not stateful:
            return None
        return refused(f"is missing, but this run keeps trick state ({', '.join(stateful)}) that would start fresh")
    try:
        doc = _parse_trick_state(path)
    except (OSError, _BadFile) as err:
        return refused(str(err))
    saved_class, current_class = doc["trainer_class"], class_name(trainer_class)
    if saved_class != current_class:
        raise CheckpointError(
            f"Cannot resume from {folder}: {path} was written by {_short(saved_class)} ({saved_class}), and this run "
            f"is {_short(current_class)} ({current_class}); its state would be dropped or misread. Options: resume "
            f"with {_short(saved_class)}; or start afresh in a new output_dir."
        )
    saved = doc["settings"]
    missing = object()
    changed = [
        f"{name}: {saved.get(name, '(not recorded)')!r} → {settings.get(name, '(not set)')!r}"
        for name in sorted(set(saved) | set(settings))
        if saved.get(name, missing) != settings.get(name, missing)
    ]
    if changed:
        return refused(
            f"was saved with other settings than this run has ({'; '.join(changed)}). Resume with the checkpoint's "
            "values"
        )
    nonfinite = nonfinite_values(doc["state"])
    if nonfinite:
        return refused(f"holds non-finite values ({', '.join(nonfinite)})")
    return doc["state"]


def load_error(folder: str, err: Exception) -> CheckpointError:
    """A state that parsed but does not fit the components it is for (a missing or mistyped key)."""
    path = os.path.join(folder, TRICK_STATE_FILE)
    return CheckpointError(
        f"Cannot resume from {folder}: {path} does not fit this run's tricks ({type(err).__name__}: {err}). "
        f"{_options(folder, opt_out=True)}"
    )
