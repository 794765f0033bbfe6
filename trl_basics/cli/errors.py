"""Bad input from the user: `UsageError`, the "did you mean" hint, and the algorithm lookup that raises them.

The bottom of the command line's modules: it imports only the standard library and the algorithm table.
"""

from __future__ import annotations

import difflib

from ..algorithms import ALGORITHMS, Algorithm, UnknownAlgorithmError, get_algorithm


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and the fix; the command exits with code 2."""


def did_you_mean(word: str, choices, prefix: str = "") -> str:
    """`` Did you mean X?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {prefix}{close[0]}?" if close else ""


def lookup_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``; a `UsageError` with the closest name and the choices when there is none."""
    try:
        return get_algorithm(name)
    except UnknownAlgorithmError:
        raise UsageError(
            f"unknown algorithm {name!r}.{did_you_mean(name, ALGORITHMS)} Choose one of: {', '.join(ALGORITHMS)}"
        ) from None


__all__ = ["UsageError", "did_you_mean", "lookup_algorithm"]
