"""Hook specifications of trl_basics.

Every hook is registration-style: it receives a ``register`` callback and calls it once per thing it contributes.
The host checks names and duplicates in one place (:mod:`trl_basics.plugins`), and the order in which tricks run
comes from the configuration, never from pluggy's call order. ``docs/hooks.md`` documents each hook with its exact
signature (a test keeps them in sync).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from .types import AdvantageEstimator, KLEstimatorFn, Trick

PROJECT_NAME = "trl_basics"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- tricks ---------------------------------------------------------------------------------------------------------


@hookspec
def trl_basics_register_tricks(register: Callable[[type[Trick]], None]) -> None:
    """Register trick classes: call ``register(TrickClass)`` once for each ``Trick`` subclass."""


# --- advantage estimators -------------------------------------------------------------------------------------------


@hookspec
def trl_basics_register_advantage_estimators(register: Callable[[type[AdvantageEstimator]], None]) -> None:
    """Register advantage estimators: call ``register(EstimatorClass)`` once for each ``AdvantageEstimator``."""


# --- KL estimators --------------------------------------------------------------------------------------------------


@hookspec
def trl_basics_register_kl_estimators(register: Callable[[str, KLEstimatorFn], None]) -> None:
    """Register per-token KL estimators: call ``register(name, fn)`` with ``fn(logprobs, ref_logprobs) -> Tensor``."""
