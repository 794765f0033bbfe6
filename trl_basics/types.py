"""The data that flows through the trick pipeline, and the base classes tricks and estimators derive from.

A generation round is described by one :class:`Rollout`. Scalar per-completion fields (``rewards``,
``completion_lengths``) hold the **global** batch, identical on every process, because TRL gathers rewards before it
computes advantages. Token-level fields (``completion_mask``, ``logprobs``, ``dense_rewards``, ...) hold this process's
rows only; ``process_slice`` says which rows of the global batch they are. Anything that needs a statistic over
token-level fields uses ``ctx.reduce_sum`` so that it is global too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from torch import Tensor


class Stage(str, Enum):
    """Pipeline stages, in the order they run. The order is fixed and documented in ``docs/hooks.md``."""

    REWARD = "reward"  # reward transforms on the gathered scalar rewards (PPO-max: normalize, then clip)
    KL = "kl"  # KL shaping: into the token rewards, the sequence reward, or the loss
    ADVANTAGE = "advantage"  # exactly one advantage estimator (the algorithm itself)
    ADVANTAGE_TRANSFORM = "advantage_transform"  # whitening, clipping
    LOSS = "loss"  # extra loss terms added to the trainer's policy loss
    METRICS = "metrics"  # observers that only log


STAGE_ORDER: tuple[Stage, ...] = tuple(Stage)


def _identity(tensor: Tensor) -> Tensor:
    return tensor


@dataclass(frozen=True)
class TrickContext:
    """What a trick may use besides the rollout: collectives, the step, and a metric sink.

    ``reduce_sum`` returns the element-wise sum of a tensor over all processes and ``gather`` concatenates a tensor
    over processes along dim 0. In a single process both are the identity. Trainers build them from accelerate
    (``accelerator.reduce(t, "sum")`` and ``accelerate.utils.gather``).
    """

    reduce_sum: Callable[[Tensor], Tensor] = _identity
    gather: Callable[[Tensor], Tensor] = _identity
    num_processes: int = 1
    global_step: int = 0
    # A metric value is a float or a one-element tensor; the trainers read tensors to the host once per step.
    log: Callable[[str, float | Tensor], None] = lambda name, value: None

    @classmethod
    def from_accelerator(cls, accelerator: Any, global_step: int = 0, log=None) -> TrickContext:
        """Collectives from an ``accelerate.Accelerator`` (sum all-reduce and gather)."""
        from accelerate.utils import gather

        single = accelerator.num_processes == 1
        return cls(
            reduce_sum=_identity if single else (lambda t: accelerator.reduce(t, reduction="sum")),
            gather=_identity if single else gather,
            num_processes=accelerator.num_processes,
            global_step=global_step,
            log=log or (lambda name, value: None),
        )

    @property
    def distributed_reduce(self) -> Callable[[Tensor], Tensor] | None:
        """``reduce_sum`` in the form the functional core takes it: ``None`` when there is only one process."""
        return None if self.num_processes == 1 else self.reduce_sum

    def scoped(self, prefix: str) -> TrickContext:
        """The same context whose ``log`` prefixes every metric name with ``prefix/``."""
        parent_log = self.log
        return dataclasses.replace(self, log=lambda name, value: parent_log(f"{prefix}/{name}", value))


@dataclass
class Rollout:
    """One generation round as the trick pipeline sees it.

    Shapes: ``N`` = completions in the global batch, ``B`` = completions on this process, ``T`` = completion length.
    """

    rewards: Tensor  # (N,) one scalar per completion; NaN marks an unscorable completion
    num_generations: int  # completions per prompt; consecutive groups of this size share a prompt
    process_slice: slice | None = None  # this process's rows of the global batch; None = all of them
    completion_mask: Tensor | None = None  # (B, T) 1 for tokens that are actions
    completion_lengths: Tensor | None = None  # (N,) active tokens per completion, global
    logprobs: Tensor | None = None  # (B, T) log-probs of the sampling policy, no grad
    ref_logprobs: Tensor | None = None  # (B, T) log-probs of the reference policy
    values: Tensor | None = None  # (B, T) critic values
    dense_rewards: Tensor | None = None  # (B, T) per-token reward terms added to the outcome reward (e.g. -β·KL_t)
    advantages: Tensor | None = None  # (B,) or (B, T), set by the advantage estimator
    returns: Tensor | None = None  # (B, T) targets for a critic, set by the advantage estimator
    extras: dict[str, Any] = field(default_factory=dict)  # free-form: data one trick passes to a later one

    def replace(self, **changes: Any) -> Rollout:
        return dataclasses.replace(self, **changes)

    @property
    def local_slice(self) -> slice:
        return self.process_slice if self.process_slice is not None else slice(None)

    def local(self, tensor: Tensor) -> Tensor:
        """This process's rows of a global ``(N, ...)`` tensor."""
        return tensor[self.local_slice]


@dataclass
class LossInputs:
    """What a loss-stage trick sees during the policy update (on this process's micro-batch)."""

    logprobs: Tensor  # (B, T) current policy log-probs, differentiable
    completion_mask: Tensor  # (B, T)
    ref_logprobs: Tensor | None = None  # (B, T)
    old_logprobs: Tensor | None = None  # (B, T) sampling-policy log-probs
    entropies: Tensor | None = None  # (B, T) per-token entropy of the current policy
    # The denominator of a token mean over the whole update: during training, the active tokens of the gradient
    # accumulation window on every process divided by the number of processes. A term Σ_t x_t / token_normalizer
    # (``functional.window_mean``) then adds up, over the window's micro-batches, to the window's token mean however
    # the window is split. None (evaluation, or a trainer without the count): the micro-batch's own token mean.
    token_normalizer: Tensor | None = None


@dataclass(frozen=True)
class Requirements:
    """What a trick (or a whole pipeline) needs from the trainer, and what it gives back.

    Trainers read these, never a trick's name: a third-party trick that declares the same needs as a built-in gets
    the same treatment. Requirements combine with ``|`` (a need of any one component is a need of the pipeline).
    """

    # Needed when a generation round is scored, before the advantages:
    sampling_logprobs: bool = False  # per-token log-probs of the sampling policy (π_old)
    reference_logprobs: bool = False  # per-token log-probs of the reference policy (π_ref)
    reference_model: bool = False  # a reference model (or PEFT base) loaded at all, even when the parent's β is 0
    # Needed during the update (and in evaluation, where the loss is computed too):
    loss_reference_logprobs: bool = False  # π_ref in the loss inputs
    loss_sampling_logprobs: bool = False  # π_old in the loss inputs
    # Given: the name (relative to the trick's ``tricks/<name>/`` scope) of the metric holding its KL to π_ref per
    # sequence, which the collapse alarm watches.
    kl_metric: str | None = None

    def __or__(self, other: Requirements) -> Requirements:
        merged = {
            f.name: getattr(self, f.name) or getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "kl_metric"
        }
        return Requirements(**merged, kl_metric=self.kl_metric or other.kl_metric)


class Trick:
    """Base class of every trick, built-in or third-party.

    Subclasses set ``name`` (unique, used in config and metrics), ``stage``, ``summary`` and ``source`` (the paper),
    and implement ``apply`` (reward, KL, advantage-transform and metric stages) and/or ``loss`` (loss stage).
    Stateful tricks override ``state_dict``/``load_state_dict``; the trainer saves them with every checkpoint.

    A built-in trick is switched on by its own config flag: ``from_args`` returns ``None`` when the flag is off. A
    third-party trick is switched on by listing its name in ``tricks``; its keyword arguments come from
    ``trick_kwargs[name]`` and reach ``__init__`` next to the training arguments.
    """

    name: ClassVar[str]
    stage: ClassVar[Stage]
    summary: ClassVar[str] = ""
    source: ClassVar[str] = ""
    flag: ClassVar[str | None] = None  # the config field that switches a built-in trick on
    # The flag values that switch it off again (``trl-basics ablate``); ``flag`` itself must be among them.
    off_flags: ClassVar[Mapping[str, Any]] = {}
    order: ClassVar[int] = 0  # position among the flag-switched tricks of its stage (lower runs first)
    # Config fields, beyond its own flags, that the trick's saved state depends on (recorded per component with
    # checkpoints: a resume that changes one is refused, or starts this trick's state fresh with the opt-out).
    state_settings: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def switched_on(cls, args: Any) -> bool:
        """Whether ``args`` switches this flag-switched trick on: its flag differs from the flag's off value."""
        if cls.flag is None or not hasattr(args, cls.flag):
            return False
        return getattr(args, cls.flag) != cls.off_flags.get(cls.flag)

    def requirements(self) -> Requirements:
        """What this trick needs from the trainer (see :class:`Requirements`); none by default."""
        return Requirements()

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        if kwargs:
            raise TypeError(
                f"trick {self.name!r} takes no options, got {sorted(kwargs)}; remove them from trick_kwargs"
            )
        self.args = args

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        """Build the trick from the training arguments, or return ``None`` if its flag leaves it off.

        ``registry`` is the trainer's :class:`~trl_basics.plugins.Registry`, for tricks that look up other plugins'
        contributions (KL shaping resolves its estimator there); ``kwargs`` come from ``trick_kwargs[name]``.
        """
        return cls(args, **kwargs)

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        return rollout

    def loss(self, inputs: LossInputs, ctx: TrickContext) -> Tensor | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"trick {self.name!r} is stateless but the checkpoint holds state {sorted(state)}")


class AdvantageEstimator(Trick):
    """Base class of the advantage estimators: exactly one runs, at the ``ADVANTAGE`` stage.

    ``apply`` must set ``rollout.advantages`` to this process's rows, ``(B,)`` for sequence-level estimators or
    ``(B, T)`` for token-level ones (``level`` says which).
    """

    stage: ClassVar[Stage] = Stage.ADVANTAGE
    level: ClassVar[str] = "sequence"  # "sequence" or "token"


KLEstimatorFn = Callable[[Tensor, Tensor], Tensor]
