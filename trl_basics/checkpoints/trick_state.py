"""The trick state file of a checkpoint: a document that describes itself, and a reader that refuses a misfit.

The trick state file ``trl_basics_tricks.json`` describes itself: the trainer class, the trl_basics version, a format
version and the value of every setting the saved state depends on. :func:`read_trick_state` refuses a different
trainer class, changed settings (each named old → new), non-finite numbers and damaged files, each with the options
to proceed; ``resume_reset_changed_state=True`` starts the trick state fresh instead (logged) for every refusal except
a different trainer class.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from .. import __version__
from ..config import TrickArguments
from .marker import TRICK_STATE_FILE, CheckpointError, older_complete

logger = logging.getLogger("trl_basics.checkpoints")

TRICK_STATE_FORMAT = "trl_basics.trick_state"
TRICK_STATE_VERSION = 2
OPT_OUT = "resume_reset_changed_state"
TRICK_STATE_KEYS = ("format", "format_version", "trl_basics_version", "trainer_class", "settings", "state")

MONITOR_SETTINGS = ("collapse_alarm", "collapse_alarm_window")


def class_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, unknown objects their repr)."""
    return json.loads(json.dumps(value, default=repr))


def _options(folder: str, opt_out: bool) -> str:
    older = older_complete(folder)
    options = [
        f"resume from an older complete checkpoint ({older})" if older else "resume from an older complete checkpoint",
    ]
    if opt_out:
        options.append(
            f"set {OPT_OUT}=True to start the trick state fresh (model, optimizer, scheduler, RNG and step still resume)"
        )
    options.append("or start afresh in a new output_dir")
    return "Options: " + "; ".join(options) + "."


# --- writing ------------------------------------------------------------------------------------------------------------


def run_settings(args: Any, estimator: str | None, extra_settings: Iterable[str] = ()) -> dict[str, Any]:
    """The settings the saved trick state depends on: every trick flag, the estimator in use, and the
    ``extra_settings`` the trainer and the active tricks declare (``state_settings``), where the config has them."""
    excluded = {OPT_OUT, *MONITOR_SETTINGS}
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrickArguments) if f.name not in excluded}
    settings["advantage_estimator"] = estimator
    for name in extra_settings:
        if hasattr(args, name):
            settings[name] = getattr(args, name)
    return _plain(settings)


def trick_state_document(trainer_class: type, settings: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": TRICK_STATE_FORMAT,
        "format_version": TRICK_STATE_VERSION,
        "trl_basics_version": __version__,
        "trainer_class": class_name(trainer_class),
        "settings": settings,
        "state": state,
    }


# --- reading ------------------------------------------------------------------------------------------------------------


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
