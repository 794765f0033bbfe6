"""Config flags for the tricks, as a dataclass mixin for TRL config classes.

``TrickArguments`` is mixed into each trainer config (``class RLOOConfig(TrickArguments, trl.RLOOConfig)``), so every
trick flag is a normal TRL config field: it has help text, goes through ``TrlParser``/``HfArgumentParser`` and YAML,
and is validated when the config is created. With every flag at its default, no trick is active.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

REWARD_NORM_CHOICES = ("none", "batch", "running")

KL_PLACEMENT_CHOICES = ("token_reward", "sequence_reward", "loss")
COLLAPSE_ALARM_CHOICES = ("off", "warn", "stop")


@dataclass
class TrickArguments:
    r"""
    Trick flags shared by every trl_basics trainer. Each flag switches on one built-in trick; ``docs/tricks.md`` gives
    the paper each comes from.

    > Parameters that control reward processing (stage 1, on the gathered scalar rewards)

    reward_noise_std (`float`, *optional*, defaults to `0.0`):
        Add Gaussian noise N(0, σ²) to the rewards before any other transform (a noisier reward model, for
        robustness studies); seeded by `seed` and the round. `0` is off.
    reward_norm (`str`, *optional*, defaults to `"none"`):
        `"batch"`: z-score over the global batch. `"running"`: running moments over all rewards seen so far
        (PPO-max, Zheng et al. 2023, §5.3).
    reward_scale (`bool`, *optional*, defaults to `False`):
        Divide rewards by the running standard deviation without shifting the mean (PPO-max reward scaling).
    reward_clip (`float` or `None`, *optional*, defaults to `None`):
        Clip rewards to `[-reward_clip, reward_clip]` after normalization (PPO-max: δ = 0.3 is stable).

    > Parameters that control KL shaping (stage 2)

    kl_coef (`float` or `None`, *optional*, defaults to `None`):
        KL coefficient β. `None` leaves KL to the parent TRL trainer (`beta`); a number switches on KL shaping.
    kl_estimator (`str`, *optional*, defaults to `"k1"`):
        `"k1"` (log-ratio), `"k2"` (½ log-ratio²), `"k3"` (exp(-ℓ)-1+ℓ), `"k3_plus"` (k3's value, k2's gradient),
        or one registered by a plugin.
    kl_placement (`str`, *optional*, defaults to `"token_reward"`):
        `"token_reward"`: -β·KL_t added to every token's reward (REINFORCE++, PPO-max). `"sequence_reward"`:
        -β·Σ_t KL_t subtracted from the sequence reward (RLOO paper Eq. 3). `"loss"`: β·mean KL_t added to the loss
        (REINFORCE++-baseline v9 Eq. 8 with k2).
    kl_target (`float` or `None`, *optional*, defaults to `None`):
        Target KL of the adaptive controller (Ziegler et al. 2019); `None` keeps β fixed.
    kl_horizon (`int`, *optional*, defaults to `10000`):
        Horizon of the adaptive KL controller, in samples.
    kl_clamp (`float` or `None`, *optional*, defaults to `None`):
        Clamp the per-token KL *estimate* to ±this value after the estimator (OpenRLHF clamps every estimator's
        output to ±10; verl clamps k3's output to ±10).
    kl_clamp_log_ratio (`float` or `None`, *optional*, defaults to `None`):
        Clamp the per-token log-ratio ℓ = log π - log π_ref to ±this value *before* the estimator, which bounds k3's
        exponential (verl clamps k3's input to ±20). Independent of `kl_clamp`; both may be set.
    use_bias_correction_kl (`bool`, *optional*, defaults to `False`):
        With `kl_placement="loss"`: multiply each token's KL estimate by the importance ratio π_θ/π_old
        (differentiable), so tokens sampled from the old policy estimate the current policy's KL (DeepSeek-V3.2;
        TRL's field of the same name). Unbiased value and gradient with k1 and k3; see docs/kl.md. TRL's
        `GRPOConfig` defaults this field to `True` for its own β·k3 loss term, which trl_basics trainers never use;
        here it defaults to `False`.

    > Parameters that control advantage estimation (stage 3) and transforms (stage 4)

    advantage_estimator (`str` or `None`, *optional*, defaults to `None`):
        Name of the advantage estimator (`rloo`, `group_mean`, `reinforce`, `moving_average`, `raft`, `vanilla`,
        `gae`, or a plugin's). `None` uses the trainer's own.
    gamma (`float`, *optional*, defaults to `1.0`):
        Discount factor γ of returns and GAE.
    gae_lambda (`float`, *optional*, defaults to `0.95`):
        λ of GAE.
    baseline_decay (`float` or `None`, *optional*, defaults to `None`):
        Moving-average baseline: `None` is the mean of all rewards seen so far (Back to Basics), a number in (0, 1)
        an exponential moving average with that decay.
    whiten_advantages (`bool`, *optional*, defaults to `False`):
        Whiten advantages over all active entries of all processes (REINFORCE++ global normalization): over tokens
        for token-level advantages (REINFORCE++ always), over completions for sequence-level ones (RLOO as in TRL).
    whiten_advantages_center_only (`bool`, *optional*, defaults to `False`):
        With `whiten_advantages`, subtract the mean but do not divide by the standard deviation.
    advantage_clip (`float` or `None`, *optional*, defaults to `None`):
        Clip advantages to ±this value (PPO-max; 0.12 acts like reward clipping).

    > Parameters that control extra loss terms (stage 5)

    entropy_bonus_coef (`float`, *optional*, defaults to `0.0`):
        Coefficient of the entropy bonus; `0` is off.
    entropy_bonus_target (`float` or `None`, *optional*, defaults to `None`):
        If set, penalise |mean entropy - target| instead of rewarding entropy (PPO-max App. B.3).

    > Parameters that control the collapse alarm (every trainer; see `docs/reliability.md`)

    collapse_alarm (`str`, *optional*, defaults to `"warn"`):
        Watch every step for a policy collapse and log `collapse/*` metrics: `"off"`, `"warn"` (log a warning) or
        `"stop"` (warn and stop training).
    collapse_alarm_window (`int`, *optional*, defaults to `10`):
        Steps per window the alarm compares.

    > Parameters that select third-party tricks

    tricks (`list[str]`, *optional*, defaults to `[]`):
        Names of plugin tricks to switch on, in the order they run within their stage.
    trick_kwargs (`dict` or `str` or `None`, *optional*, defaults to `None`):
        Options for named tricks and estimators, as a dict (or JSON string) `{name: {option: value}}`.

    > Parameters that control resuming

    resume_reset_changed_state (`bool`, *optional*, defaults to `False`):
        On resume, where settings that saved trick state depends on changed: start fresh the state of the components
        whose settings changed (logged, naming them) instead of refusing; where the trick state holds non-finite
        values or is missing or damaged: start all of it fresh. The model, optimizer, scheduler, RNG and step still
        resume (`docs/reliability.md`).
    """

    reward_noise_std: float = field(
        default=0.0,
        metadata={
            "help": "Add Gaussian noise of this standard deviation to the rewards (a noisier reward model). 0 = off."
        },
    )
    reward_norm: str = field(
        default="none",
        metadata={
            "help": "Reward normalization: 'none', 'batch' (z-score over the global batch) or 'running' (running "
            "moments, PPO-max).",
            "choices": list(REWARD_NORM_CHOICES),
        },
    )
    reward_scale: bool = field(
        default=False,
        metadata={"help": "Divide rewards by their running standard deviation (PPO-max reward scaling)."},
    )
    reward_clip: float | None = field(
        default=None,
        metadata={"help": "Clip rewards to [-reward_clip, reward_clip] after normalization (PPO-max δ, e.g. 0.3)."},
    )
    kl_coef: float | None = field(
        default=None,
        metadata={"help": "KL coefficient β of KL shaping. None leaves KL to the parent TRL trainer's `beta`."},
    )
    kl_estimator: str = field(
        default="k1",
        metadata={"help": "Per-token KL estimator: 'k1', 'k2', 'k3', 'k3_plus', or one registered by a plugin."},
    )
    kl_placement: str = field(
        default="token_reward",
        metadata={
            "help": "Where the KL penalty acts: 'token_reward', 'sequence_reward' or 'loss'.",
            "choices": list(KL_PLACEMENT_CHOICES),
        },
    )
    kl_target: float | None = field(
        default=None,
        metadata={"help": "Target KL of the adaptive KL controller (Ziegler et al. 2019). None keeps kl_coef fixed."},
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (in samples) of the adaptive KL controller."})
    kl_clamp: float | None = field(
        default=None,
        metadata={
            "help": "Clamp the per-token KL estimate to ±kl_clamp after the estimator (OpenRLHF: 10; verl's k3: 10)."
        },
    )
    kl_clamp_log_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Clamp the per-token log-ratio to ±kl_clamp_log_ratio before the KL estimator (verl's k3: 20)."
        },
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "With kl_placement='loss': weight the per-token KL by the importance ratio pi_theta/pi_old "
            "(unbiased value and gradient for k1 and k3). Off by default, unlike TRL GRPO's field of this name."
        },
    )
    advantage_estimator: str | None = field(
        default=None,
        metadata={
            "help": "Advantage estimator: 'rloo', 'group_mean', 'reinforce', 'moving_average', 'raft', 'vanilla', "
            "'gae', or a plugin's. None uses the trainer's own."
        },
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount factor γ for returns and GAE."})
    gae_lambda: float = field(default=0.95, metadata={"help": "λ of generalized advantage estimation."})
    baseline_decay: float | None = field(
        default=None,
        metadata={
            "help": "Moving-average baseline: None = mean of all rewards seen so far; a number in (0, 1) = EMA decay."
        },
    )
    whiten_advantages: bool = field(
        default=False,
        metadata={
            "help": "Whiten advantages over all active entries of all processes (REINFORCE++): tokens for "
            "token-level advantages, completions for sequence-level ones."
        },
    )
    whiten_advantages_center_only: bool = field(
        default=False, metadata={"help": "With whiten_advantages: only subtract the mean, do not rescale."}
    )
    advantage_clip: float | None = field(
        default=None, metadata={"help": "Clip advantages to [-advantage_clip, advantage_clip] (PPO-max)."}
    )
    entropy_bonus_coef: float = field(
        default=0.0, metadata={"help": "Coefficient of the entropy bonus added to the loss. 0 is off."}
    )
    entropy_bonus_target: float | None = field(
        default=None,
        metadata={"help": "If set, penalise |mean entropy - target| instead of rewarding entropy (PPO-max)."},
    )
    collapse_alarm: str = field(
        default="warn",
        metadata={
            "help": "Collapse alarm: 'off', 'warn' or 'stop' (warn and stop training). Logs collapse/* every step.",
            "choices": list(COLLAPSE_ALARM_CHOICES),
        },
    )
    collapse_alarm_window: int = field(
        default=10, metadata={"help": "Steps per window compared by the collapse alarm."}
    )
    tricks: list[str] = field(
        default_factory=list,
        metadata={"help": "Plugin tricks to switch on by name, in the order they run within their stage."},
    )
    trick_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Options for named tricks and estimators: a dict or JSON string {name: {option: value}}."},
    )
    resume_reset_changed_state: bool = field(
        default=False,
        metadata={
            "help": "On resume, instead of refusing: start fresh the trick state of the components whose settings "
            "changed (logged), or all of it when it holds NaN/inf or is missing or damaged."
        },
    )

    def __post_init__(self) -> None:
        parent_post_init = getattr(super(), "__post_init__", None)
        if parent_post_init is not None:
            parent_post_init()
        if isinstance(self.trick_kwargs, str):
            try:
                self.trick_kwargs = json.loads(self.trick_kwargs) if self.trick_kwargs.strip() else None
            except json.JSONDecodeError as err:
                raise ValueError(
                    f'trick_kwargs must be a JSON object like \'{{"length_penalty": {{"coef": 0.01}}}}\', '
                    f"got {self.trick_kwargs!r} ({err})"
                ) from None
        self.tricks = list(self.tricks or [])
        validate_trick_arguments(self)

    def ablation_switches(self) -> dict[str, dict[str, Any]]:
        """For every trick this config switches on, the flag values that switch it off.

        Trainer configs extend this with their own components (PPO-max's value clipping, RLOO's ``beta``).
        """
        from .pipeline import TrickPipeline

        switches: dict[str, dict[str, Any]] = {}
        for trick in TrickPipeline.from_args(self).tricks:
            if trick.name in self.tricks:
                switches[trick.name] = {"tricks": [name for name in self.tricks if name != trick.name]}
            elif trick.off_flags:
                switches[trick.name] = dict(trick.off_flags)
        return switches


def trick_field_names() -> set[str]:
    """The names of every trick flag (the fields of :class:`TrickArguments`)."""
    return {f.name for f in dataclasses.fields(TrickArguments)}


def _refuse(problem: str, fix: str) -> None:
    raise ValueError(f"{problem}. {fix}")


def validate_trick_arguments(args: Any, registry: Any = None) -> None:
    """Refuse bad values and contradictory settings, saying what to change.

    Checks the trick flags alone and against the TRL knobs of the parent config that do the same job. Names of
    plugin tricks, estimators and KL estimators are checked against the installed plugins.
    """
    if args.reward_norm not in REWARD_NORM_CHOICES:
        _refuse(f"reward_norm={args.reward_norm!r} is not a valid choice", f"Use one of {REWARD_NORM_CHOICES}")
    if args.kl_placement not in KL_PLACEMENT_CHOICES:
        _refuse(f"kl_placement={args.kl_placement!r} is not a valid choice", f"Use one of {KL_PLACEMENT_CHOICES}")
    alarm = getattr(args, "collapse_alarm", "warn")
    if alarm not in COLLAPSE_ALARM_CHOICES:
        _refuse(f"collapse_alarm={alarm!r} is not a valid choice", f"Use one of {COLLAPSE_ALARM_CHOICES}")
    if getattr(args, "collapse_alarm_window", 10) < 1:
        _refuse(f"collapse_alarm_window={args.collapse_alarm_window} must be >= 1", "Use a window of at least 1 step")
    for name in ("reward_clip", "advantage_clip", "kl_clamp", "kl_clamp_log_ratio", "kl_target"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            _refuse(f"{name}={value} must be positive", f"Set {name} to a positive number, or None to switch it off")
    if getattr(args, "reward_noise_std", 0.0) < 0:
        _refuse(f"reward_noise_std={args.reward_noise_std} is negative", "Use a standard deviation >= 0 (0 is off)")
    if args.kl_coef is not None and args.kl_coef < 0:
        _refuse(f"kl_coef={args.kl_coef} is negative", "Use kl_coef >= 0, or None to leave KL to the TRL trainer")
    if args.kl_horizon <= 0:
        _refuse(f"kl_horizon={args.kl_horizon} must be positive", "Set kl_horizon to a number of samples, e.g. 10000")
    if not 0.0 <= args.gamma <= 1.0:
        _refuse(f"gamma={args.gamma} is outside [0, 1]", "Use a discount factor in [0, 1] (1.0 for RLHF)")
    if not 0.0 <= args.gae_lambda <= 1.0:
        _refuse(f"gae_lambda={args.gae_lambda} is outside [0, 1]", "Use λ in [0, 1], e.g. 0.95")
    if args.baseline_decay is not None and not 0.0 < args.baseline_decay < 1.0:
        _refuse(
            f"baseline_decay={args.baseline_decay} is outside (0, 1)",
            "Use a decay such as 0.9, or None for the mean of all rewards seen so far",
        )
    if args.entropy_bonus_coef < 0:
        _refuse(f"entropy_bonus_coef={args.entropy_bonus_coef} is negative", "Use a coefficient >= 0 (0 is off)")
    if args.entropy_bonus_target is not None and args.entropy_bonus_coef == 0:
        _refuse(
            "entropy_bonus_target is set but entropy_bonus_coef is 0, so the target would have no effect",
            "Set entropy_bonus_coef > 0 as well, or drop entropy_bonus_target",
        )

    # Contradictions among our own flags.
    if args.reward_norm != "none" and args.reward_scale:
        _refuse(
            f"reward_norm={args.reward_norm!r} and reward_scale=True both rescale the reward",
            "Pick one: PPO-max uses either normalization (+ clipping) or scaling, never both",
        )
    if args.kl_target is not None and args.kl_coef is None:
        _refuse("kl_target is set but kl_coef is None", "Set kl_coef to the initial coefficient of the adaptive KL")
    if (
        args.kl_placement == "loss"
        and args.kl_estimator == "k1"
        and args.kl_coef is not None
        and not getattr(args, "use_bias_correction_kl", False)
    ):
        _refuse(
            "kl_estimator='k1' with kl_placement='loss': the gradient of k1 as a loss ignores the reference model",
            "Use kl_estimator='k2' (exact reverse-KL gradient) or 'k3' in the loss, set use_bias_correction_kl=True "
            "(ρ·k1 has the exact gradient), or put k1 in the reward",
        )
    if getattr(args, "use_bias_correction_kl", False):
        # TRL RLOO's own beta is a KL in the sequence reward; GRPO-style parents have `loss_type`.
        trl_reward_kl = args.kl_coef is None and getattr(args, "beta", 0.0) != 0.0 and not hasattr(args, "loss_type")
        if trl_reward_kl or (args.kl_coef is not None and args.kl_placement != "loss"):
            where = f"kl_placement={args.kl_placement!r}" if args.kl_coef is not None else "TRL's beta"
            _refuse(
                "use_bias_correction_kl=True corrects a KL term in the loss, but the KL penalty here is in the reward "
                f"({where}), where the policy gradient's own ratio already weighs it",
                "Set kl_placement='loss' (with kl_coef), or use_bias_correction_kl=False",
            )
    if args.whiten_advantages_center_only and not args.whiten_advantages:
        _refuse("whiten_advantages_center_only=True needs whiten_advantages=True", "Set whiten_advantages=True")

    # Contradictions with the parent TRL config's own knobs for the same job.
    if args.reward_clip is not None and getattr(args, "reward_clip_range", None):
        _refuse(
            "reward_clip and TRL's reward_clip_range both clip the reward",
            "Use one of them: drop reward_clip_range (TRL) or reward_clip (trl_basics)",
        )
    if args.whiten_advantages and getattr(args, "normalize_advantages", False):
        _refuse(
            "whiten_advantages and TRL's normalize_advantages both normalize the advantages",
            "Use one of them: set normalize_advantages=False or whiten_advantages=False",
        )
    if args.entropy_bonus_coef > 0 and getattr(args, "entropy_coef", 0.0):
        _refuse(
            "entropy_bonus_coef and TRL's entropy_coef both add an entropy bonus",
            "Use one of them: set entropy_coef=0.0 or entropy_bonus_coef=0.0",
        )
    if args.kl_coef is not None and hasattr(args, "loss_type") and getattr(args, "beta", 0.0) != 0.0:
        # GRPO-style parents add beta·k3 to the loss on their own; with our KL too, KL would count twice.
        _refuse(
            f"kl_coef={args.kl_coef} and TRL's beta={args.beta} would both apply a KL penalty "
            "(beta adds k3 to the loss)",
            "Set beta=0.0 and let kl_coef/kl_estimator/kl_placement control the KL penalty, or drop kl_coef",
        )

    _validate_names(args, registry)


def _validate_names(args: Any, registry: Any) -> None:
    from .plugins import Registry

    registry = registry if registry is not None else Registry.from_plugin_manager()
    registry.kl_estimator(args.kl_estimator)
    if args.advantage_estimator is not None:
        registry.advantage_estimator(args.advantage_estimator)
    seen: set[str] = set()
    for name in args.tricks:
        trick_cls = registry.trick(name)
        if trick_cls.flag is not None:
            _refuse(
                f"trick {name!r} is a built-in switched on by its own flag",
                f"Remove it from tricks and set {trick_cls.flag} instead",
            )
        if name in seen:
            _refuse(f"trick {name!r} is listed twice in tricks", "List each trick once")
        seen.add(name)
    kwargs = args.trick_kwargs or {}
    if not isinstance(kwargs, dict) or not all(isinstance(v, dict) for v in kwargs.values()):
        _refuse(f"trick_kwargs={kwargs!r} is not a mapping of name -> options", 'Use {"name": {"option": value}}')
    configurable = set(args.tricks) | ({args.advantage_estimator} - {None})
    unknown = sorted(set(kwargs) - configurable)
    if unknown:
        _refuse(
            f"trick_kwargs has options for {unknown}, which are not switched on",
            f"Add them to tricks (or advantage_estimator), or remove their options. Switched on: {sorted(configurable)}",
        )
