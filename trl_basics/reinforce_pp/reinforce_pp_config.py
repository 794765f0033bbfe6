"""Config of REINFORCE++ and REINFORCE++-baseline (Hu 2025): ``trl.GRPOConfig`` plus trick flags and presets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trl

from ..config import TrickArguments
from ..seams import single_generation_allowed

BASELINE_CHOICES = ("none", "group")
PRESET_KL_COEF = 0.01
logger = logging.getLogger(__name__)


@dataclass
class ReinforcePlusPlusConfig(TrickArguments, trl.GRPOConfig):
    r"""
    ``trl.GRPOConfig`` with REINFORCE++'s defaults (Hu 2025, arXiv 2501.03262).

    REINFORCE++: per-token k1 KL to the reference in the reward (v1 Eq. 4, β = 0.01), rewards-to-go with γ = 1
    (Eq. 7), global whitening over all active tokens of all processes (Eq. 8), then the PPO clipped objective per token.
    REINFORCE++-baseline (`baseline="group"`): subtract the group mean first (v9 Eq. 6), then whiten globally; v9
    Eq. 8 moves the KL into the loss as k2 (`kl_placement="loss"`, `kl_estimator="k2"`).

    GRPO's own options keep working (`loss_type` including `"vespo"`, `epsilon`/`epsilon_high`, `delta`,
    `importance_sampling_level`, `off_policy_mask_threshold`, `num_iterations`, vLLM generation, tools, reward
    functions). GRPO options that shape the advantages are translated into their REINFORCE++ meaning, logged once:
    `beta` (with `kl_coef` left at its preset or `None`) becomes `kl_coef`; `scale_rewards="batch"` is REINFORCE++'s
    global normalization (`whiten_advantages=True`); `multi_objective_aggregation="normalize_then_sum"` z-scores
    each reward function within its group before the weighted sum. `scale_rewards="group"` is refused: dividing by
    the group's standard deviation is the GRPO normalization REINFORCE++ replaces (see docs/reinforce_pp.md).

    The advantage estimator can be swapped with `advantage_estimator`: `"rloo"` (leave-one-out baseline) and
    `"moving_average"` (REINFORCE with a moving-average baseline) run on this GRPO machinery (docs/rloo.md).

    > Parameters that control the algorithm

    baseline (`str`, *optional*, defaults to `"none"`):
        `"none"`: REINFORCE++. `"group"`: REINFORCE++-baseline (subtract the mean reward of the prompt's group).
    """

    baseline: str = field(
        default="none",
        metadata={
            "help": "'none' = REINFORCE++; 'group' = REINFORCE++-baseline (subtract the group mean reward, Hu 2025 "
            "v9 Eq. 6).",
            "choices": list(BASELINE_CHOICES),
        },
    )
    # Presets from the paper (v1 Table 1 and §3); every one can be overridden.
    kl_coef: float | None = field(
        default=PRESET_KL_COEF, metadata={"help": "KL coefficient β (REINFORCE++ v1: 0.01 general, 0.001 math)."}
    )
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator (REINFORCE++: k1)."})
    kl_placement: str = field(
        default="token_reward",
        metadata={"help": "Where the KL acts: 'token_reward' (REINFORCE++), 'sequence_reward' or 'loss'."},
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Global advantage normalization over all active tokens (REINFORCE++ Eq. 8)."}
    )
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "GRPO's reward scaling: 'none', or 'batch' (becomes REINFORCE++'s global whitening); 'group' is "
            "refused (REINFORCE++ replaces per-group std scaling by global normalization)."
        },
    )

    def __post_init__(self) -> None:
        if self.baseline not in BASELINE_CHOICES:
            raise ValueError(f"baseline={self.baseline!r} is not a valid choice. Use one of {BASELINE_CHOICES}")
        self._translate_grpo_options()
        # REINFORCE++ v9 recommends one sample per prompt for general RLHF; GRPOConfig refuses it on its own.
        with single_generation_allowed(self):
            super().__post_init__()
        if self.baseline == "group" and self.num_generations < 2:
            raise ValueError(
                "baseline='group' subtracts the mean of the prompt's group and needs num_generations >= 2; "
                "use baseline='none' for one sample per prompt"
            )
        if self.advantage_estimator in ("rloo", "group_mean", "raft") and self.num_generations < 2:
            raise ValueError(
                f"advantage_estimator={self.advantage_estimator!r} needs a group of samples per prompt "
                "(num_generations >= 2); use 'moving_average' or 'reinforce' for one sample per prompt"
            )
        if self.baseline == "group" and self.advantage_estimator not in (None, "group_mean"):
            raise ValueError(
                f"baseline='group' selects the group-mean estimator, but advantage_estimator="
                f"{self.advantage_estimator!r} asks for another. Set baseline='none' to use {self.advantage_estimator!r}."
            )
        if self.multi_objective_aggregation == "normalize_then_sum" and self.num_generations < 2:
            raise ValueError(
                "multi_objective_aggregation='normalize_then_sum' z-scores each reward within its group and needs "
                "num_generations >= 2; use 'sum_then_normalize' for one sample per prompt"
            )

    def _translate_grpo_options(self) -> None:
        """Give GRPO's advantage-side options their REINFORCE++ meaning (before validation), logging each once."""
        scale = {True: "group", False: "none"}.get(self.scale_rewards, self.scale_rewards)
        if scale == "group":
            raise ValueError(
                "scale_rewards='group' divides each advantage by its group's reward std, the GRPO normalization that "
                "REINFORCE++ replaces by global normalization (Hu 2025: per-prompt std scaling over-weights prompts "
                "with near-constant rewards). Set scale_rewards='none' (whiten_advantages does the global "
                "normalization), or use trl.GRPOTrainer for GRPO's advantages."
            )
        if scale == "batch":
            logger.warning(
                "scale_rewards='batch' became REINFORCE++'s global advantage normalization (whiten_advantages=True, "
                "scale_rewards='none')."
            )
            self.whiten_advantages = True
            scale = "none"
        self.scale_rewards = scale
        if self.beta != 0.0:
            if self.kl_coef not in (None, PRESET_KL_COEF, self.beta):
                raise ValueError(
                    f"beta={self.beta} (GRPO's KL coefficient) and kl_coef={self.kl_coef} both set a KL coefficient. "
                    "Keep one: kl_coef (REINFORCE++'s KL, estimator kl_estimator, placed by kl_placement) or beta."
                )
            logger.warning(
                f"beta={self.beta} became REINFORCE++'s KL coefficient: kl_coef={self.beta} with "
                f"kl_estimator={self.kl_estimator!r}, kl_placement={self.kl_placement!r} (GRPO's own k3 loss term "
                "stays off)."
            )
            self.kl_coef, self.beta = self.beta, 0.0
        if self.multi_objective_aggregation == "normalize_then_sum":
            logger.warning(
                "multi_objective_aggregation='normalize_then_sum': each reward function is z-scored within its group "
                "before the weighted sum; REINFORCE++'s advantages are computed from that sum."
            )
