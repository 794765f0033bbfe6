"""The ordered trick pipeline a trainer runs once per generation round (and once per loss computation).

Stage order (fixed, see ``docs/hooks.md``):

1. reward transforms      reward_norm → reward_scale → reward_clip   (PPO-max: normalize, then clip)
2. KL shaping             kl_shaping                                   (after clipping, PPO-max §5.4)
3. advantage estimation   exactly one estimator
4. advantage transforms   advantage_whiten → advantage_clip
5. extra loss terms       every active trick's ``loss`` (KL in the loss, entropy bonus)
6. metrics                observers

Within a stage, plugin tricks named in ``tricks`` run first, in the order listed, then the flag-switched tricks in
the order they declare (``Trick.order``). The order never depends on pluggy's registration order.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor

from .plugins import Registry
from .types import STAGE_ORDER, AdvantageEstimator, LossInputs, Requirements, Rollout, Stage, Trick, TrickContext


def flag_switched(registry: Registry, args: Any) -> list[type[Trick]]:
    """The flag-switched trick classes (the built-ins, and any plugin trick whose ``flag`` is a field of ``args``)
    in the order they run: by stage, then by their declared ``order``, then by name. Tricks listed by name in
    ``args.tricks`` are left out (they run first in their stage, in the order listed)."""
    named = set(getattr(args, "tricks", None) or ())
    classes = [
        cls
        for name, cls in registry.tricks.items()
        if cls.flag is not None and hasattr(args, cls.flag) and name not in named
    ]
    return sorted(classes, key=lambda cls: (STAGE_ORDER.index(cls.stage), cls.order, cls.name))


class TrickError(RuntimeError):
    """A trick's ``apply`` or ``loss`` raised: names the trick, its stage and its class; the original is chained.

    Raised as a subclass of the original exception's type as well where Python allows it, so ``except ValueError``
    around a run still catches a trick's ``ValueError``.
    """

    trick_name: str
    stage: Stage | None
    method: str


@functools.cache
def _trick_error_type(error_type: type[Exception]) -> type[TrickError]:
    if issubclass(error_type, TrickError):
        return error_type
    try:
        return type("TrickError", (TrickError, error_type), {"__module__": __name__})
    except TypeError:  # incompatible layouts (e.g. OSError): the plain TrickError still names the trick
        return TrickError


def trick_error(trick: Trick, method: str, error: Exception) -> TrickError:
    """The exception re-raised (``from error``) when ``trick.<method>`` raised ``error``."""
    name = getattr(trick, "name", type(trick).__name__)
    stage = Stage.LOSS if method == "loss" else getattr(trick, "stage", None)
    message = (
        f"trick {name!r} (stage {getattr(stage, 'value', stage)}, {type(trick).__module__}.{type(trick).__qualname__}) "
        f"raised {type(error).__name__} in {method}(): {error}. Fix the trick or its options, or switch it off."
    )
    try:
        wrapped = _trick_error_type(type(error))(message)
    except Exception:  # noqa: BLE001 - an exception type whose constructor needs more than a message
        wrapped = TrickError(message)
    wrapped.trick_name, wrapped.stage, wrapped.method = name, stage, method
    return wrapped


class TrickPipeline:
    """Runs the active tricks of one trainer, stage by stage, and owns their state."""

    def __init__(self, tricks: Sequence[Trick] = (), estimator: AdvantageEstimator | None = None) -> None:
        names = [trick.name for trick in tricks]
        if len(set(names)) != len(names):
            raise ValueError(f"a trick is active twice in {names}; each trick may appear once")
        # A stable sort keeps the given order inside each stage.
        self.tricks: list[Trick] = sorted(tricks, key=lambda trick: STAGE_ORDER.index(trick.stage))
        self.estimator = estimator

    @classmethod
    def from_args(
        cls, args: Any, registry: Registry | None = None, default_estimator: str | None = None
    ) -> TrickPipeline:
        """Build the pipeline that ``args`` switches on. ``default_estimator`` is the trainer's own estimator."""
        registry = registry if registry is not None else Registry.from_plugin_manager()
        options: dict[str, dict[str, Any]] = dict(getattr(args, "trick_kwargs", None) or {})

        named = [registry.trick(name).from_args(args, registry, **options.get(name, {})) for name in args.tricks]
        builtins = [cls.from_args(args, registry) for cls in flag_switched(registry, args)]
        tricks = [trick for trick in named + builtins if trick is not None]

        estimator_name = getattr(args, "advantage_estimator", None) or default_estimator
        estimator = None
        if estimator_name is not None:
            estimator_cls = registry.advantage_estimator(estimator_name)
            estimator = estimator_cls.from_args(args, registry, **options.get(estimator_name, {}))
        return cls(tricks, estimator)

    @classmethod
    def switched_on(cls, args: Any, registry: Registry | None = None) -> bool:
        """Whether ``args`` switches any trick on (by its flag, or by name in ``tricks``) or names an estimator."""
        registry = registry if registry is not None else Registry.from_plugin_manager()
        if getattr(args, "tricks", None) or getattr(args, "advantage_estimator", None):
            return True
        return any(trick_cls.switched_on(args) for trick_cls in flag_switched(registry, args))

    @property
    def components(self) -> list[Trick]:
        """Every active trick and the estimator, in the order they run."""
        return self.tricks + ([self.estimator] if self.estimator is not None else [])

    @property
    def requirements(self) -> Requirements:
        """What the active components need from the trainer, together; ``kl_metric`` is the full metric name."""
        total = Requirements()
        for component in self.components:
            needs = component.requirements()
            if needs.kl_metric is not None:
                needs = dataclasses.replace(needs, kl_metric=f"tricks/{component.name}/{needs.kl_metric}")
            total = total | needs
        return total

    @property
    def state_settings(self) -> tuple[str, ...]:
        """Config fields, beyond the trick flags, that the active components' saved state depends on."""
        return tuple(dict.fromkeys(name for c in self.components for name in c.state_settings))

    @property
    def names(self) -> list[str]:
        """Active components in the order they run."""
        names = [trick.name for trick in self.tricks if trick.stage in (Stage.REWARD, Stage.KL)]
        if self.estimator is not None:
            names.append(self.estimator.name)
        names += [trick.name for trick in self.tricks if trick.stage not in (Stage.REWARD, Stage.KL)]
        return names

    def __bool__(self) -> bool:
        return bool(self.tricks) or self.estimator is not None

    def stage(self, stage: Stage) -> list[Trick]:
        return [trick for trick in self.tricks if trick.stage is stage]

    def _run(self, trick: Trick, rollout: Rollout, ctx: TrickContext) -> Rollout:
        try:
            return trick.apply(rollout, ctx.scoped(f"tricks/{trick.name}"))
        except Exception as err:
            raise trick_error(trick, "apply", err) from err

    def process(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        """Stages 1-4 and 6 for one generation round: rewards → KL → advantages → advantage transforms → metrics.

        Unscorable completions (NaN reward) keep NaN through every stage, so no statistic counts them; their
        advantages (and returns) are zeroed at the end, as TRL does.
        """
        for stage in (Stage.REWARD, Stage.KL):
            for trick in self.stage(stage):
                rollout = self._run(trick, rollout, ctx)
        if self.estimator is not None:
            rollout = self._run(self.estimator, rollout, ctx)
        for trick in self.stage(Stage.ADVANTAGE_TRANSFORM):
            rollout = self._run(trick, rollout, ctx)
        rollout = _zero_unscorable(rollout, ctx)
        for trick in self.stage(Stage.METRICS):
            rollout = self._run(trick, rollout, ctx)
        return rollout

    def loss(self, inputs: LossInputs, ctx: TrickContext) -> Tensor | None:
        """Stage 5: the sum of every active trick's extra loss term, or ``None`` if no trick adds one."""
        total = None
        for trick in self.tricks:
            try:
                term = trick.loss(inputs, ctx.scoped(f"tricks/{trick.name}"))
            except Exception as err:
                raise trick_error(trick, "loss", err) from err
            if term is not None:
                ctx.log(f"tricks/{trick.name}/loss", term.detach())  # a tensor: read with the step's metrics
                total = term if total is None else total + term
        return total

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """State of every stateful component, by name (running moments, KL controller, baselines)."""
        return {c.name: state for c in self.components if (state := c.state_dict())}

    def state_dependencies(self) -> dict[str, list[str]]:
        """For each component that keeps state, the config fields its saved state depends on: its flag and the flags
        that switch it off, its declared ``state_settings``; an estimator also ``advantage_estimator`` and a trick
        named in ``tricks`` also ``tricks``, and both their options, ``trick_kwargs``."""
        found: dict[str, list[str]] = {}
        for c in self.components:
            if not c.state_dict():
                continue
            names = [*([c.flag] if c.flag else []), *c.off_flags, *c.state_settings]
            if c is self.estimator:
                names += ["advantage_estimator", "trick_kwargs"]
            elif c.flag is None:
                names += ["tricks", "trick_kwargs"]
            found[c.name] = list(dict.fromkeys(names))
        return found

    def load_state_dict(self, state: dict[str, dict[str, Any]], reset: Collection[str] = ()) -> None:
        """Load every component's saved state, except those named in ``reset``, which keep their fresh state."""
        components = {c.name: c for c in self.components}
        unknown = sorted(set(state) - set(components) - set(reset))
        if unknown:
            raise ValueError(
                f"the checkpoint holds state for {unknown}, which this run does not switch on "
                f"(active: {sorted(components)}). Resume with the same trick flags as the run that saved it."
            )
        # A component with no saved state (switched on after the checkpoint was written) keeps its fresh state.
        for name, component_state in state.items():
            if name not in reset:
                components[name].load_state_dict(component_state)


def _zero_unscorable(rollout: Rollout, ctx: TrickContext) -> Rollout:
    """Advantages (and returns) of unscorable completions become 0; any other non-finite value too, counted."""
    if rollout.advantages is None:
        return rollout
    unscorable = torch.isnan(rollout.rewards)
    # Metrics are logged as tensors (the trick context reads them to the host with the step's others, in one go).
    ctx.log("tricks/unscorable_fraction", unscorable.float().mean() if unscorable.numel() else 0.0)
    local_unscorable = rollout.local(unscorable)
    if rollout.advantages.dim() == 2:
        local_unscorable = local_unscorable.unsqueeze(1).expand_as(rollout.advantages)
    # Non-finite values that do not come from an unscorable reward (e.g. a NaN log-prob) are a fault: count them.
    faulty = ~torch.isfinite(rollout.advantages) & ~local_unscorable
    size = torch.full((), faulty.numel(), device=faulty.device)  # made on the device: no host-to-device copy
    counts = ctx.reduce_sum(torch.stack([faulty.sum(), size]).float())
    ctx.log("tricks/nonfinite_advantage_fraction", counts[0] / counts[1].clamp(min=1.0))
    changes: dict[str, Tensor] = {"advantages": _finite_or_zero(rollout.advantages)}
    if rollout.returns is not None:
        changes["returns"] = _finite_or_zero(rollout.returns)
    return rollout.replace(**changes)


def _finite_or_zero(values: Tensor) -> Tensor:
    return torch.where(torch.isfinite(values), values, torch.zeros_like(values))
