"""Config of REINFORCE++ and REINFORCE++-baseline (Hu 2025): ``trl.GRPOConfig`` plus trick flags and presets."""

from __future__ import annotations

from dataclasses import dataclass, field

import trl

from ..config import TrickArguments
from ..trainer_mixin import single_generation_allowed

BASELINE_CHOICES = ("none", "group")


@dataclass
class ReinforcePlusPlusConfig(TrickArguments, trl.GRPOConfig):
    r"""
    ``trl.GRPOConfig`` with REINFORCE++'s defaults (Hu 2025, arXiv 2501.03262).

    REINFORCE++: per-token k1 KL to the reference in the reward (v1 Eq. 4, β = 0.01), rewards-to-go with γ = 1
    (Eq. 7), global whitening over all active tokens of all processes (Eq. 8), then the PPO clipped objective per token.
    REINFORCE++-baseline (`baseline="group"`): subtract the group mean first (v9 Eq. 6), then whiten globally; v9
    Eq. 8 moves the KL into the loss as k2 (`kl_placement="loss"`, `kl_estimator="k2"`).

    GRPO's own options keep working (`loss_type`, `epsilon`/`epsilon_high`, `num_iterations`, vLLM generation, tools,
    reward functions). GRPO's reward normalization (`scale_rewards`) does not apply: advantages come from the trick
    pipeline, so it must stay `"none"`.

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
        default=0.01, metadata={"help": "KL coefficient β (REINFORCE++ v1: 0.01 general, 0.001 math)."}
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
        metadata={"help": "GRPO's reward scaling; must stay 'none' (REINFORCE++ whitens advantages globally)."},
    )

    def __post_init__(self) -> None:
        if self.baseline not in BASELINE_CHOICES:
            raise ValueError(f"baseline={self.baseline!r} is not a valid choice. Use one of {BASELINE_CHOICES}")
        # REINFORCE++ v9 recommends one sample per prompt for general RLHF; GRPOConfig refuses it on its own.
        with single_generation_allowed(self):
            super().__post_init__()
        if self.scale_rewards not in ("none", False):
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r} would have no effect: REINFORCE++ computes its advantages in "
                "the trick pipeline. Set scale_rewards='none' and use whiten_advantages (global) or reward_norm."
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not supported: REINFORCE++ sums "
                "the weighted rewards first. Set multi_objective_aggregation='sum_then_normalize'."
            )
        if self.loss_type == "vespo" or self.off_policy_mask_threshold is not None:
            raise ValueError(
                "loss_type='vespo' and off_policy_mask_threshold assume sequence-level advantages; REINFORCE++ gives "
                "token-level ones. Use another loss_type (e.g. 'dapo', 'grpo', 'bnpo') and off_policy_mask_threshold=None."
            )
        if self.baseline == "group" and self.num_generations < 2:
            raise ValueError(
                "baseline='group' subtracts the mean of the prompt's group and needs num_generations >= 2; "
                "use baseline='none' for one sample per prompt"
            )
