"""Check `trl-basics train ALGO` flags and print its `--help` without importing torch, TRL or transformers.

The real parser is TRL's ``TrlParser`` over the algorithm's config class, and building it imports torch and
transformers (about 10 s). Every flag it knows, with its type and choices, and its help text are stored in
``flags.json.gz`` next to this module (written by ``python -m trl_basics.cli.flags``; a test keeps it equal to the
real parser). A typo, a bad value or ``--help`` is answered from that file in well under a second. The file is used
only while it matches the installed TRL and transformers and trl_basics' config sources; otherwise the real parser
is built and answers the same questions, only slower.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

from ..algorithms import ALGORITHMS
from .errors import UsageError, did_you_mean
from .parser import make_parser

MANIFEST_PATH = Path(__file__).with_name("flags.json.gz")
HELP_COLUMNS = "100"  # the help text is stored at this width
_PACKAGE = Path(__file__).resolve().parent.parent
BOOL_STRINGS = {"yes": True, "true": True, "t": True, "y": True, "1": True, "no": False, "false": False, "f": False}
BOOL_STRINGS |= {"n": False, "0": False}


# --- the stored manifest ---------------------------------------------------------------------------------------------


def fingerprint() -> dict:
    """What the stored flags depend on: TRL's and transformers' versions, trl_basics' config sources, the parser and
    the algorithm table."""
    sources = sorted(p for p in _PACKAGE.rglob("*config*.py") if "__pycache__" not in p.parts)
    sources += [_PACKAGE / "cli" / "parser.py", _PACKAGE / "algorithms.py"]
    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "trl": metadata.version("trl"),
        "transformers": metadata.version("transformers"),
        "sources": digest.hexdigest(),
    }


def _kind(action: argparse.Action) -> str:
    name = getattr(action.type, "__name__", "")
    if name == "string_to_bool":
        return "bool"
    if name in ("int", "float"):
        return name
    return "str"


def describe_parser(parser: argparse.ArgumentParser) -> dict:
    """The flags of ``parser`` (option strings, how many values, their type and choices) and its help text."""
    flags = {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        entry = {"dest": action.dest, "nargs": action.nargs, "kind": _kind(action)}
        if isinstance(action, argparse._StoreFalseAction | argparse._StoreTrueAction | argparse._StoreConstAction):
            entry["nargs"] = 0
        if action.choices:
            entry["choices"] = [str(choice) for choice in action.choices]
        for option in action.option_strings:
            flags[option] = entry
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        text = parser.format_help()
    finally:
        if previous is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = previous
    return {"flags": flags, "help": text}


def build_manifest() -> dict:
    """The manifest from the real parsers (slow: imports TRL and the config classes)."""
    return {
        "fingerprint": fingerprint(),
        "algorithms": {name: describe_parser(make_parser(name, machine=False)) for name in ALGORITHMS},
    }


@cache
def stored_manifest() -> dict | None:
    """The shipped manifest, or None when it is missing or does not match what is installed."""
    try:
        manifest = json.loads(gzip.decompress(MANIFEST_PATH.read_bytes()))
    except (OSError, ValueError):
        return None
    try:
        current = fingerprint()
    except (OSError, metadata.PackageNotFoundError):
        return None
    return manifest if manifest.get("fingerprint") == current else None


def algorithm_flags(algorithm: str) -> dict:
    manifest = stored_manifest()
    if manifest is not None and algorithm in manifest["algorithms"]:
        return manifest["algorithms"][algorithm]
    return describe_parser(make_parser(algorithm))  # slow, but the same answers


# --- checking a command line -----------------------------------------------------------------------------------------


def _convert(value: str, entry: dict, flag: str) -> None:
    kind = entry["kind"]
    try:
        if kind == "bool":
            if value.lower() not in BOOL_STRINGS:
                raise ValueError
        elif kind == "int":
            int(value)
        elif kind == "float":
            float(value)
    except ValueError:
        expected = {"bool": "true or false", "int": "a whole number", "float": "a number"}[kind]
        raise UsageError(f"{flag} needs {expected}, not {value!r}.") from None
    if "choices" in entry and value not in entry["choices"]:
        raise UsageError(
            f"{flag} {value!r} is not one of: {', '.join(entry['choices'])}.{did_you_mean(value, entry['choices'])}"
        )


def check_train_args(algorithm: str, argv: list[str], prog: str) -> dict:
    """Check every flag of ``argv`` (and the keys of a ``--config`` YAML file) against ``algorithm``'s flags.

    Prints the help and exits 0 for ``-h``/``--help``. Raises ``UsageError`` with a "did you mean" for an unknown
    flag or key, and for a value of the wrong type or outside the choices. Returns the names of the fields that
    the command line or the YAML file set, with their values as given (strings from the command line, which win
    over the YAML file's values).
    """
    described = algorithm_flags(algorithm)
    flags: dict = described["flags"]
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(described["help"])
        raise SystemExit(0)
    names = sorted({option for option in flags if option.startswith("--") and "-" not in option[2:]})
    given: dict = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("-") or token == "-":
            raise UsageError(
                f"unexpected argument {token!r}: every setting is a flag such as --max_steps 10. See `{prog} --help`."
            )
        flag, has_value, inline = token.partition("=")
        if flag == "--config":
            if not has_value:
                if index >= len(argv):
                    raise UsageError("--config needs the path of a YAML file.")
                inline, index = argv[index], index + 1
            given = check_config_file(inline, flags) | given
            continue
        entry = flags.get(flag)
        if entry is None:
            hint = did_you_mean(flag.lstrip("-").replace("-", "_"), [n[2:] for n in names], prefix="--")
            raise UsageError(f"unknown flag {flag}.{hint} `{prog} --help` lists every flag.")
        values = [inline] if has_value else []
        nargs = entry["nargs"]
        if not has_value:
            limit = {None: 1, "?": 1, 0: 0}.get(nargs, len(argv))
            while len(values) < limit and index < len(argv) and not _is_flag(argv[index]):
                values.append(argv[index])
                index += 1
        if nargs is None and len(values) != 1:
            raise UsageError(f"{flag} needs a value.")
        if nargs == "+" and not values:
            raise UsageError(f"{flag} needs at least one value.")
        if nargs == 0 and has_value:
            raise UsageError(f"{flag} takes no value.")
        for value in values:
            _convert(value, entry, flag)
        given[entry["dest"]] = values if nargs == "+" else (values[0] if values else None)
    return given


def _is_flag(token: str) -> bool:
    if not token.startswith("-") or token == "-":
        return False
    try:  # negative numbers are values
        float(token)
        return False
    except ValueError:
        return True


def check_config_file(path: str, flags: dict) -> dict:
    """The keys of a YAML config file, each checked against the known flags (``env`` is TRL's own key)."""
    import yaml

    try:
        with open(path) as stream:
            config = yaml.safe_load(stream)
    except OSError as err:
        raise UsageError(f"cannot read the --config file {path!r}: {err.strerror}. Check the path.") from None
    except yaml.YAMLError as err:
        raise UsageError(f"the --config file {path!r} is not valid YAML: {err}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UsageError(f"the --config file {path!r} must hold a mapping of flag names to values.")
    dests = {entry["dest"] for entry in flags.values()}
    for key in config:
        if key == "env":
            continue
        if key not in dests:
            hint = did_you_mean(str(key), dests)
            raise UsageError(f"unknown key {key!r} in the --config file {path!r}.{hint}")
    return {key: value for key, value in config.items() if key != "env"}


def main() -> None:
    """Write flags.json.gz from the real parsers."""
    text = json.dumps(build_manifest(), indent=0, sort_keys=True) + "\n"
    MANIFEST_PATH.write_bytes(gzip.compress(text.encode(), compresslevel=9, mtime=0))
    print(f"wrote {MANIFEST_PATH}")


if __name__ == "__main__":
    main()
