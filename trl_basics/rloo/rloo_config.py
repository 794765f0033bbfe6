"""Config of the RLOO family: ``trl.RLOOConfig`` plus the trick flags and a paper-faithful preset."""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from ..config import TrickArguments


@dataclass
class RLOOConfig(TrickArguments, trl.RLOOConfig):
    r"""
    ``trl.RLOOConfig`` with the trl_basics trick flags (see ``TrickArguments`` and ``docs/tricks.md``).

    With every trick flag at its default, training is exactly TRL's RLOO. With any flag set, advantages are
    recomputed by the trick pipeline from the gathered rewards; TRL's own knobs keep their meaning there:
    ``reward_clip_range`` clamps the raw reward first, ``beta`` is the k1 sequence-level KL in the reward (Back to
    Basics Eq. 3), and ``normalize_advantages`` whitens the final advantages as TRL does.

    > Parameters that select the paper-faithful mode

    paper_faithful (`bool`, *optional*, defaults to `False`):
        Back to Basics (Ahmadian et al. 2024) as written: the whole completion is one action, k1 KL summed over the
        sequence and subtracted from the reward, leave-one-out baseline over the k samples, and exactly one
        on-policy gradient step per batch (`num_iterations=1`, `steps_per_generation=1`, so the ratio is 1 and
        clipping never acts). Refuses settings that contradict it (reward clipping or advantage normalization).

    > Parameters that control the policy loss

    delta (`float` or `None`, *optional*, defaults to `None`):
        Dual clip with c = delta (TRL GRPO's `delta`, OpenRLHF's `dual_clip`, verl's `clip_ratio_c`): for a negative
        advantage the loss is capped at -delta·A, so one token (or sequence) whose ratio explodes cannot dominate.
        Must be >= 1 + `epsilon_high` (below that TRL's two-sided clip would also cap positive advantages). Acts on
        the token-level loss and on the sequence-level loss; `None` keeps TRL's loss unchanged.
    """

    paper_faithful: bool = field(
        default=False,
        metadata={
            "help": "Back to Basics as written: sequence-level k1 KL in the reward, leave-one-out baseline, one "
            "on-policy step per batch (num_iterations=1, steps_per_generation=1)."
        },
    )

    delta: float | None = field(
        default=None,
        metadata={
            "help": "Dual clip c = delta (TRL GRPO's delta, OpenRLHF dual_clip, verl clip_ratio_c): caps the loss of a "
            "negative advantage at -delta*A. Must be >= 1 + epsilon_high. None is off."
        },
    )

    def ablation_switches(self) -> dict:
        switches = super().ablation_switches()
        if self.kl_coef is None and self.beta != 0.0:
            switches["kl_beta"] = {"beta": 0.0}  # TRL's own sequence-level KL in the reward
        if self.normalize_advantages:
            switches["normalize_advantages"] = {"normalize_advantages": False}
        if self.delta is not None:
            switches["dual_clip"] = {"delta": None}
        return switches

    def __post_init__(self) -> None:
        if self.paper_faithful:
            if self.steps_per_generation not in (None, 1) or self.num_iterations != 1:
                raise ValueError(
                    f"paper_faithful=True takes one on-policy step per batch, but num_iterations={self.num_iterations} "
                    f"and steps_per_generation={self.steps_per_generation}. Set both to 1 (or leave them unset)."
                )
            self.steps_per_generation = 1
        super().__post_init__()
        upper = 1.0 + (self.epsilon_high if self.epsilon_high is not None else self.epsilon)
        if self.delta is not None and not self.delta >= upper:
            raise ValueError(
                f"delta={self.delta} must be >= 1 + epsilon_high = {upper:g}: dual clip bounds the loss "
                "of negative advantages at -delta*A beyond the upper clip range. Use e.g. delta=3.0, or None."
            )
        if self.kl_coef is not None and self.beta != 0.0:
            raise ValueError(
                f"kl_coef={self.kl_coef} and TRL's beta={self.beta} would both put a KL penalty in the reward. "
                "Set beta=0.0 and let kl_coef/kl_estimator/kl_placement control the KL, or drop kl_coef to keep "
                "TRL's sequence-level k1 KL with coefficient beta."
            )
        if self.paper_faithful:
            contradictions = {
                "reward_clip_range": self.reward_clip_range,
                "normalize_advantages": self.normalize_advantages,
                "reward_clip": self.reward_clip,
                "whiten_advantages": self.whiten_advantages,
                "advantage_clip": self.advantage_clip,
            }
            on = sorted(name for name, value in contradictions.items() if value)
            if on:
                raise ValueError(
                    f"paper_faithful=True follows Back to Basics, which has no reward clipping or advantage "
                    f"normalization, but {on} are set. Unset them or set paper_faithful=False."
                )
            if self.kl_coef is not None and self.kl_placement == "loss":
                raise ValueError(
                    "paper_faithful=True puts the KL in the reward (Back to Basics Eq. 3); kl_placement='loss' "
                    "contradicts it. Use kl_placement='sequence_reward' (the paper) or 'token_reward'."
                )
