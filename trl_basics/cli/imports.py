"""Import a callable that the command line names as ``module:function``: reward functions, tools, environment factories.

One rule for all of them: ``package.module:name`` (or TRL's dotted ``package.module.name``) is imported from the
installed packages and ``PYTHONPATH`` first; if the module is not found there, from the current working directory (as
TRL's scripts do), appended last so that it never shadows an installed package. File paths are refused and nothing
is evaluated. A module that does not come from the installed packages is announced in one line with its path. Every
problem a user can fix raises `UsageError` naming the flag's value and the fix: a file path, a bad name, a missing
module, a module that fails to import, a missing attribute, an attribute that cannot be called.
"""

from __future__ import annotations

import importlib
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UsageError, did_you_mean

__all__ = ["check_import_spec", "import_callable"]


def check_import_spec(spec: str, what: str, forms: str | None = None) -> tuple[str, str]:
    """``(module, name)`` of ``spec``; `UsageError` for a file path or a string that is not an import name.

    ``what`` names the input in messages (``"reward function"``, ``"tool"``); ``forms`` replaces the sentence that
    says which forms are accepted.
    """
    forms = forms or f"Name a {what} in a module as 'package.module:name'"
    if "/" in spec or "\\" in spec or spec.split(":", 1)[0].endswith(".py"):
        module = Path(spec.split(":", 1)[0]).stem
        name = spec.split(":", 1)[1] if ":" in spec else "function"
        raise UsageError(
            f"{what} {spec!r} names a file; files are not imported. Run from the file's folder and pass "
            f"'{module}:{name}', put the folder on PYTHONPATH, or install the package that holds it."
        )
    if ":" in spec:
        module, _, name = spec.partition(":")
    elif "." in spec:
        module, _, name = spec.rpartition(".")  # TRL's form: my_lib.rewards.custom_reward
    else:
        raise UsageError(f"{what} {spec!r} is not a 'module:name' import name. {forms}.")
    if not module or not all(part.isidentifier() for part in module.split(".")) or not name.isidentifier():
        raise UsageError(f"{what} {spec!r} is not a valid name. {forms}.")
    return module, name


def _installed(path: str) -> bool:
    """Whether ``path`` lies in this Python's installed packages or standard library."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    resolved = os.path.realpath(path)
    return any(resolved.startswith(os.path.realpath(root) + os.sep) for root in roots)


def import_callable(spec: str, what: str, kind: str = "function", forms: str | None = None) -> Callable[..., Any]:
    """The callable ``spec`` names (see the module docstring for where it may come from).

    Args:
        spec: ``package.module:name`` or ``package.module.name``.
        what: What the flag gives, for messages (``"reward function"``, ``"tool"``, ``"environment factory"``).
        kind: What the name should be, for messages (``"function"``, ``"class or function"``).
        forms: Replaces the sentence of the messages that says which forms are accepted.
    """
    module_name, attribute = check_import_spec(spec, what, forms)
    module = _import_module(module_name, spec, what)
    if not hasattr(module, attribute):
        public = [name for name in dir(module) if not name.startswith("_") and callable(getattr(module, name))]
        hint = did_you_mean(attribute, public)
        listed = f" It has: {', '.join(public[:12])}." if public and not hint else ""
        raise UsageError(f"module {module_name!r} has no {kind} {attribute!r} (from {what} {spec!r}).{hint}{listed}")
    value = getattr(module, attribute)
    if not callable(value):
        raise UsageError(
            f"{module_name}.{attribute} (from {what} {spec!r}) is a {type(value).__name__}, not a {kind}: it cannot be "
            f"called. Name a {kind}."
        )
    origin = getattr(module, "__file__", None)
    if origin and module_name.split(".")[0] != "trl_basics" and not _installed(origin):
        print(f"trl-basics: {what} {spec} comes from {origin} (not an installed package)", file=sys.stderr)
    return value


def _import_module(module_name: str, spec: str, what: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name.split(".")[0] and err.name != module_name:
            raise UsageError(
                f"module {module_name!r} for {what} {spec!r} was found but failed to import: {err}. "
                "Install what it needs."
            ) from None
    except Exception as err:  # noqa: BLE001 - the user's module itself failed
        raise UsageError(
            f"module {module_name!r} for {what} {spec!r} failed to import: {type(err).__name__}: {err}"
        ) from None
    cwd = os.getcwd()
    top = module_name.split(".")[0]
    if (Path(cwd) / f"{top}.py").is_file() or (Path(cwd) / top).is_dir():
        if cwd not in sys.path:
            sys.path.append(cwd)  # last: never shadows an installed package
        importlib.invalidate_caches()
        try:
            return importlib.import_module(module_name)
        except Exception as err:  # noqa: BLE001 - reported as a problem with the input
            raise UsageError(
                f"module {module_name!r} for {what} {spec!r} (in {cwd}) failed to import: {type(err).__name__}: {err}"
            ) from None
    raise UsageError(
        f"cannot find module {module_name!r} for {what} {spec!r}: it is not installed, not on PYTHONPATH "
        f"and not in the working directory {cwd}. Install the package that provides it, run from the folder that "
        "holds it, or check the spelling."
    )
