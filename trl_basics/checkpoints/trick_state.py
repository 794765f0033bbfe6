"""The trick state file of a checkpoint: a document that describes itself, and a reader that refuses a misfit.

The trick state file ``trl_basics_tricks.json`` describes itself: the trainer class, the trl_basics version, a format
version, the value of every trick flag and declared setting, and which of those settings the saved state depends on:
the trainer's (``trainer_settings``: its declared ``state_settings`` and the advantage estimator) and, per stateful
component, its own (``component_settings``: its flag, the flags that switch it off, its ``state_settings``).

:func:`read_trick_state` refuses a different trainer class, non-finite numbers and damaged files, and a changed
setting that saved state depends on (each named old → new, with the components that depend on it), each with the
options to proceed. A changed setting no saved state depends on goes ahead, with a warning naming it old → new.
``resume_reset_changed_state=True`` starts fresh only the components whose settings changed (all of them for a
trainer setting), and the whole trick state for a damaged file or non-finite values; a different trainer class is
refused whatever it says. A version-2 file records no dependencies: any changed setting is refused, and the opt-out
starts the whole trick state fresh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import __version__
from ..config import TrickArguments
from .marker import TRICK_STATE_FILE, CheckpointError, older_complete

logger = logging.getLogger("trl_basics.checkpoints")

TRICK_STATE_FORMAT = "trl_basics.trick_state"
TRICK_STATE_VERSION = 3
READABLE_VERSIONS = (2, 3)
OPT_OUT = "resume_reset_changed_state"
TRICK_STATE_KEYS = ("format", "format_version", "trl_basics_version", "trainer_class", "settings", "state")
DEPENDENCY_KEYS = ("trainer_settings", "component_settings")  # since version 3

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


def trainer_settings(trainer_class: type) -> list[str]:
    """The settings the whole trick state depends on: the trainer's declared ``state_settings`` and the estimator."""
    declared = getattr(trainer_class, "declared_state_settings", tuple)()
    return list(dict.fromkeys([*declared, "advantage_estimator"]))


def trick_state_document(
    trainer_class: type,
    settings: dict[str, Any],
    state: dict[str, Any],
    component_settings: Mapping[str, Iterable[str]] | None = None,
    num_processes: int | None = None,
) -> dict[str, Any]:
    """The document saved with a checkpoint; ``component_settings`` names, per component in ``state``, the settings
    its state depends on (a component left out depends on the trainer's settings only); ``num_processes`` is the
    number of processes that trained (recorded where given)."""
    component_settings = component_settings or {}
    extra = {} if num_processes is None else {"num_processes": num_processes}
    return {
        "format": TRICK_STATE_FORMAT,
        "format_version": TRICK_STATE_VERSION,
        "trl_basics_version": __version__,
        "trainer_class": class_name(trainer_class),
        "settings": settings,
        "trainer_settings": trainer_settings(trainer_class),
        "component_settings": {name: list(component_settings.get(name, ())) for name in state},
        **extra,
        "state": state,
    }


def _note_process_count(folder: str, saved: Any, current: int | None) -> None:
    """Warn when a checkpoint resumes on another number of processes: what resumes exactly and what does not."""
    if current is None or not isinstance(saved, int) or saved == current:
        return
    logger.warning(
        "Resuming from %s, saved by %d process(es), with %d: the trick state resumes exactly (it is global: running "
        "moments, KL controller, baselines); the data order differs from an uninterrupted run, and a process's RNG "
        "state is restored only where the checkpoint has its rng_state_<rank>.pth (rng_state.pth for one process)",
        folder,
        saved,
        current,
    )


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
    if doc["format"] != TRICK_STATE_FORMAT or doc["format_version"] not in READABLE_VERSIONS:
        raise _BadFile(
            f"has format {doc['format']!r} version {doc['format_version']!r}; this trl_basics reads "
            f"{TRICK_STATE_FORMAT!r} versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    checked: tuple[tuple[str, type], ...] = (("trainer_class", str), ("settings", dict), ("state", dict))
    if doc["format_version"] >= 3:
        missing = [key for key in DEPENDENCY_KEYS if key not in doc]
        if missing:
            raise _BadFile(f"lacks the key(s) {', '.join(missing)}")
        checked += (("trainer_settings", list), ("component_settings", dict))
    for key, kind in checked:
        if not isinstance(doc[key], kind):
            raise _BadFile(f"has {key} of type {type(doc[key]).__name__}, expected {kind.__name__}")
    bad = sorted(name for name, component in doc["state"].items() if not isinstance(component, dict))
    if bad:
        raise _BadFile(f"has state for {', '.join(bad)} that is not an object")
    lists = [doc.get("trainer_settings", []), *doc.get("component_settings", {}).values()]
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in lists):
        raise _BadFile("has trainer_settings or component_settings that are not lists of setting names")
    return doc


@dataclass
class ResumePlan:
    """What a resume does with the trick state: the saved ``state`` to load (``None``: all of it starts fresh) and the
    ``reset`` components that start fresh although the checkpoint holds their state."""

    state: dict[str, Any] | None
    reset: set[str] = field(default_factory=set)


def _change(name: str, saved: dict[str, Any], settings: dict[str, Any]) -> str:
    return f"{name}: {saved.get(name, '(not recorded)')!r} → {settings.get(name, '(not set)')!r}"


def _dependents(doc: dict[str, Any], changed: list[str]) -> dict[str, list[str]]:
    """The components of ``doc``'s state whose saved state depends on a setting in ``changed``, with those settings.
    A trainer setting concerns every component; ``"trainer"`` stands for the trainer's own (stateless) part."""
    trainer_changed = [name for name in changed if name in doc["trainer_settings"]]
    found: dict[str, list[str]] = {"trainer": trainer_changed} if trainer_changed else {}
    for component in doc["state"]:
        own = [name for name in changed if name in doc["component_settings"].get(component, ())]
        if own or trainer_changed:
            found[component] = sorted({*own, *trainer_changed})
    return found


def plan_trick_state(
    folder: str,
    *,
    trainer_class: type,
    settings: dict[str, Any],
    stateful: list[str],
    reset: bool,
    num_processes: int | None = None,
) -> ResumePlan:
    """What to do with the trick state of checkpoint ``folder`` (see the module docstring).

    ``stateful`` names this run's components that keep state (a missing file is refused only for such a run);
    ``reset`` is ``resume_reset_changed_state``; ``num_processes``, this run's process count, is compared with the
    checkpoint's (a warning if they differ). Raises :class:`CheckpointError` for every refusal.
    """
    path = os.path.join(folder, TRICK_STATE_FILE)

    def refused(problem: str) -> ResumePlan:
        if reset:
            logger.warning(
                "%s=True: %s %s; the trick state starts fresh (the model, optimizer, scheduler, RNG and step resume "
                "from %s)",
                OPT_OUT,
                path,
                problem,
                folder,
            )
            return ResumePlan(None)
        raise CheckpointError(f"Cannot resume from {folder}: {path} {problem}. {_options(folder, opt_out=True)}")

    if not os.path.exists(path):
        if not stateful:
            return ResumePlan(None)
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
    _note_process_count(folder, doc.get("num_processes"), num_processes)
    saved = doc["settings"]
    missing = object()
    changed = [
        name for name in sorted(set(saved) | set(settings)) if saved.get(name, missing) != settings.get(name, missing)
    ]
    if doc["format_version"] < 3:  # no dependencies recorded: every change is refused
        if changed:
            listed = "; ".join(_change(name, saved, settings) for name in changed)
            return refused(
                f"was saved with other settings than this run has ({listed}). Resume with the checkpoint's values"
            )
        dependents: dict[str, list[str]] = {}
    else:
        dependents = _dependents(doc, changed)
    bound = sorted({name for names in dependents.values() for name in names})
    fresh = {name for name in dependents if name != "trainer"}
    if bound:
        listed = "; ".join(_change(name, saved, settings) for name in bound)
        parts = (["the trainer"] if "trainer" in dependents else []) + (
            [f"the saved state of {', '.join(sorted(fresh))}"] if fresh else []
        )
        verb = "depends" if len(parts) == 1 else "depend"
        problem = f"was saved with other settings than this run has ({listed}), which {' and '.join(parts)} {verb} on"
        if not reset:
            raise CheckpointError(
                f"Cannot resume from {folder}: {path} {problem}. Resume with the checkpoint's values. "
                f"{_options(folder, opt_out=True)}"
            )
        kept = sorted(set(doc["state"]) - fresh)
        logger.warning(
            "%s=True: %s %s; the trick state starts fresh for %s and is kept for %s (the model, optimizer, scheduler, "
            "RNG and step resume from %s)",
            OPT_OUT,
            path,
            problem,
            ", ".join(sorted(fresh)) or "no component",
            ", ".join(kept) or "no component",
            folder,
        )
    free = [name for name in changed if name not in bound]
    if free:
        logger.warning(
            "Resuming from %s with changed settings no saved trick state depends on: %s",
            folder,
            "; ".join(_change(name, saved, settings) for name in free),
        )
    nonfinite = nonfinite_values({name: value for name, value in doc["state"].items() if name not in fresh})
    if nonfinite:
        return refused(f"holds non-finite values ({', '.join(nonfinite)})")
    return ResumePlan(doc["state"], fresh)


def read_trick_state(
    folder: str,
    *,
    trainer_class: type,
    settings: dict[str, Any],
    stateful: list[str],
    reset: bool,
) -> dict[str, Any] | None:
    """The saved trick state to load from checkpoint ``folder`` (without the components that start fresh), or
    ``None`` to start it all fresh; see :func:`plan_trick_state`."""
    plan = plan_trick_state(folder, trainer_class=trainer_class, settings=settings, stateful=stateful, reset=reset)
    if plan.state is None:
        return None
    return {name: value for name, value in plan.state.items() if name not in plan.reset}


def load_error(folder: str, err: Exception) -> CheckpointError:
    """A state that parsed but does not fit the components it is for (a missing or mistyped key)."""
    path = os.path.join(folder, TRICK_STATE_FILE)
    return CheckpointError(
        f"Cannot resume from {folder}: {path} does not fit this run's tricks ({type(err).__name__}: {err}). "
        f"{_options(folder, opt_out=True)}"
    )
