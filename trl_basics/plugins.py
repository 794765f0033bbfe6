"""Plugin manager and the per-trainer registry of tricks, advantage estimators and KL estimators.

``get_plugin_manager()`` returns a **new** manager on every call; nothing is loaded at import time and there is no
module-level registry. Loading order: hook specs, then the built-in plugins (ordinary plugins, by module path), then
third-party plugins from the ``trl_basics`` entry-point group, then ``check_pending()`` so that a misspelled hook
implementation fails loudly instead of being ignored.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers the entry points that failed to load (name -> why), so that asking for a
    trick one of them would have provided can say why it is unavailable."""

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        self.unavailable_plugins: dict[str, str] = {}


# Failed entry points already reported in this process: the warning comes once, however many managers are built.
_reported_failures: set[tuple[str, str]] = set()


def get_plugin_manager(*, autoload: bool | None = None, plugins: Iterable[Any] = ()) -> PluginManager:
    """Build a fresh plugin manager.

    Args:
        autoload: load third-party plugins from the ``trl_basics`` entry-point group. ``None`` (default) loads them
            unless the environment variable ``TRL_BASICS_DISABLE_PLUGIN_AUTOLOAD`` is set to a true value.
        plugins: extra plugin objects or modules to register after the built-ins (handy in tests and notebooks).

    A third-party plugin that fails to import is skipped with one warning (naming its distribution, entry point and
    error) and recorded in ``pm.unavailable_plugins``; two distributions that register the same entry-point name are
    an error naming both.
    """
    pm = PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_path in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_path), name=module_path)
    if autoload is None:
        autoload = not autoload_disabled()
    if autoload:
        _load_entry_points(pm)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _distribution_name(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    return getattr(dist, "name", None) or "an unknown distribution"


def _load_entry_points(pm: PluginManager) -> None:
    """Register every plugin of the entry-point group; a broken one is reported and skipped, a clash refused."""
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        earlier = seen.get(entry_point.name)
        if earlier is not None:
            if (_distribution_name(earlier), earlier.value) == (_distribution_name(entry_point), entry_point.value):
                continue  # the same distribution found twice on sys.path
            raise ValueError(
                f"two installed distributions register the trl_basics plugin {entry_point.name!r}: "
                f"{_distribution_name(earlier)!r} ({earlier.value}) and {_distribution_name(entry_point)!r} "
                f"({entry_point.value}). Uninstall one of them (pip uninstall ...), or set "
                f"{DISABLE_AUTOLOAD_ENV}=1 and register the one you want with get_plugin_manager(plugins=[...])."
            )
        seen[entry_point.name] = entry_point
        if pm.get_plugin(entry_point.name) is not None or pm.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
        # A missing optional dependency (a CUDA library, say) must not break runs that do not use the plugin.
        except Exception as err:  # noqa: BLE001
            reason = (
                f"the trl_basics plugin {entry_point.name!r} ({entry_point.value}) from distribution "
                f"{_distribution_name(entry_point)!r} failed to load: {type(err).__name__}: {err}"
            )
            pm.unavailable_plugins[entry_point.name] = reason
            key = (_distribution_name(entry_point), entry_point.name)
            if key not in _reported_failures:
                _reported_failures.add(key)
                warnings.warn(
                    f"{reason}. It is skipped; its tricks are unavailable. Fix its installation, uninstall it, or set "
                    f"{DISABLE_AUTOLOAD_ENV}=1 to load no third-party plugin.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            continue
        pm.register(plugin, name=entry_point.name)


def _origin(obj: Any) -> str:
    return getattr(obj, "__module__", None) or repr(obj)


@dataclass(frozen=True)
class Registry:
    """Everything the plugins registered, by name. Built once per trainer (or config) from a plugin manager."""

    tricks: Mapping[str, type[Trick]]
    advantage_estimators: Mapping[str, type[AdvantageEstimator]]
    kl_estimators: Mapping[str, KLEstimatorFn]
    # Third-party plugins that failed to load, by entry-point name, with the reason (named in lookup errors).
    unavailable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

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
        unavailable = dict(getattr(pm, "unavailable_plugins", {}))
        return cls(
            MappingProxyType(tricks),
            MappingProxyType(estimators),
            MappingProxyType(kl_estimators),
            MappingProxyType(unavailable),
        )

    def trick(self, name: str) -> type[Trick]:
        return _lookup(self.tricks, "trick", name, self.unavailable)

    def advantage_estimator(self, name: str) -> type[AdvantageEstimator]:
        return _lookup(self.advantage_estimators, "advantage estimator", name, self.unavailable)

    def kl_estimator(self, name: str) -> KLEstimatorFn:
        return _lookup(self.kl_estimators, "KL estimator", name, self.unavailable)


def _lookup(table: Mapping[str, Any], kind: str, name: str, unavailable: Mapping[str, str]) -> Any:
    try:
        return table[name]
    except KeyError:
        pass
    valid = ", ".join(f"{key} ({_origin(value)})" for key, value in sorted(table.items()))
    if unavailable:
        # The name may come from a plugin that did not load: say why first.
        reasons = "; ".join(unavailable.values())
        raise ValueError(
            f"{kind} {name!r} is unavailable: a trl_basics plugin that may provide it did not load ({reasons}). Fix "
            f"that plugin's installation, or use one of the loaded names: {valid}."
        )
    raise ValueError(
        f"unknown {kind} {name!r}. Valid names: {valid}. A third-party {kind} must be installed so that it "
        f"registers under the {ENTRY_POINT_GROUP!r} entry-point group."
    )


def describe(registry: Registry) -> list[tuple[str, str, str]]:
    """(kind, name, origin) rows for ``trl-basics plugins``-style listings."""
    rows = [("trick", name, _origin(cls)) for name, cls in registry.tricks.items()]
    rows += [("advantage_estimator", name, _origin(cls)) for name, cls in registry.advantage_estimators.items()]
    rows += [("kl_estimator", name, _origin(fn)) for name, fn in registry.kl_estimators.items()]
    return sorted(rows)
