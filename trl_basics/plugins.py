"""Plugin manager and the per-trainer registry of tricks, advantage estimators and KL estimators.

``get_plugin_manager()`` returns a **new** manager on every call; nothing is loaded at import time and there is no
module-level registry. Loading order: hook specs, then the built-in plugins (ordinary plugins, by module path), then
third-party plugins from the ``trl_basics`` entry-point group, then ``check_pending()`` so that a misspelled hook
implementation fails loudly instead of being ignored.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import pluggy

from . import hookspecs
from .types import AdvantageEstimator, KLEstimatorFn, Stage, Trick

ENTRY_POINT_GROUP = "trl_basics"
DISABLE_AUTOLOAD_ENV = "TRL_BASICS_DISABLE_PLUGIN_AUTOLOAD"

# Built-in plugins, registered exactly like third-party ones.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "trl_basics.tricks.reward",
    "trl_basics.tricks.kl",
    "trl_basics.tricks.advantage",
    "trl_basics.tricks.loss",
    "trl_basics.tricks.estimators",
)


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def get_plugin_manager(*, autoload: bool | None = None, plugins: Iterable[Any] = ()) -> pluggy.PluginManager:
    """Build a fresh plugin manager.

    Args:
        autoload: load third-party plugins from the ``trl_basics`` entry-point group. ``None`` (default) loads them
            unless the environment variable ``TRL_BASICS_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
        plugins: extra plugin objects or modules to register after the built-ins (handy in tests and notebooks).
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_path in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_path), name=module_path)
    if autoload is None:
        autoload = not autoload_disabled()
    if autoload:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _origin(obj: Any) -> str:
    return getattr(obj, "__module__", None) or repr(obj)


@dataclass(frozen=True)
class Registry:
    """Everything the plugins registered, by name. Built once per trainer (or config) from a plugin manager."""

    tricks: Mapping[str, type[Trick]]
    advantage_estimators: Mapping[str, type[AdvantageEstimator]]
    kl_estimators: Mapping[str, KLEstimatorFn]

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager | None = None) -> Registry:
        pm = pm if pm is not None else get_plugin_manager()
        tricks: dict[str, type[Trick]] = {}
        estimators: dict[str, type[AdvantageEstimator]] = {}
        kl_estimators: dict[str, KLEstimatorFn] = {}

        def add(table: dict[str, Any], kind: str, name: str, obj: Any) -> None:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"{kind} name {name!r} from {_origin(obj)} must be a Python identifier")
            if name in table:
                raise ValueError(
                    f"duplicate {kind} name {name!r}: registered by {_origin(table[name])} and again by "
                    f"{_origin(obj)}. Rename one of them or uninstall one of the plugins."
                )
            table[name] = obj

        def register_trick(trick_cls: type[Trick]) -> None:
            if not (isinstance(trick_cls, type) and issubclass(trick_cls, Trick)):
                raise TypeError(f"register() takes a Trick subclass, got {trick_cls!r}")
            if issubclass(trick_cls, AdvantageEstimator) or trick_cls.stage is Stage.ADVANTAGE:
                raise TypeError(
                    f"{trick_cls.__name__} is an advantage estimator; register it with "
                    "trl_basics_register_advantage_estimators instead"
                )
            add(tricks, "trick", getattr(trick_cls, "name", None), trick_cls)

        def register_estimator(estimator_cls: type[AdvantageEstimator]) -> None:
            if not (isinstance(estimator_cls, type) and issubclass(estimator_cls, AdvantageEstimator)):
                raise TypeError(f"register() takes an AdvantageEstimator subclass, got {estimator_cls!r}")
            add(estimators, "advantage estimator", getattr(estimator_cls, "name", None), estimator_cls)

        def register_kl_estimator(name: str, fn: KLEstimatorFn) -> None:
            if not callable(fn):
                raise TypeError(f"KL estimator {name!r} must be callable, got {fn!r}")
            add(kl_estimators, "KL estimator", name, fn)

        pm.hook.trl_basics_register_tricks(register=register_trick)
        pm.hook.trl_basics_register_advantage_estimators(register=register_estimator)
        pm.hook.trl_basics_register_kl_estimators(register=register_kl_estimator)
        return cls(MappingProxyType(tricks), MappingProxyType(estimators), MappingProxyType(kl_estimators))

    def trick(self, name: str) -> type[Trick]:
        return _lookup(self.tricks, "trick", name)

    def advantage_estimator(self, name: str) -> type[AdvantageEstimator]:
        return _lookup(self.advantage_estimators, "advantage estimator", name)

    def kl_estimator(self, name: str) -> KLEstimatorFn:
        return _lookup(self.kl_estimators, "KL estimator", name)


def _lookup(table: Mapping[str, Any], kind: str, name: str) -> Any:
    try:
        return table[name]
    except KeyError:
        valid = ", ".join(f"{key} ({_origin(value)})" for key, value in sorted(table.items()))
        raise ValueError(
            f"unknown {kind} {name!r}. Valid names: {valid}. A third-party {kind} must be installed so that it "
            f"registers under the {ENTRY_POINT_GROUP!r} entry-point group."
        ) from None


def describe(registry: Registry) -> list[tuple[str, str, str]]:
    """(kind, name, origin) rows for ``trl-basics plugins``-style listings."""
    rows = [("trick", name, _origin(cls)) for name, cls in registry.tricks.items()]
    rows += [("advantage_estimator", name, _origin(cls)) for name, cls in registry.advantage_estimators.items()]
    rows += [("kl_estimator", name, _origin(fn)) for name, fn in registry.kl_estimators.items()]
    return sorted(rows)



