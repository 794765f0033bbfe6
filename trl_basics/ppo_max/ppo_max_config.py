"""Config of PPO-max (Zheng et al. 2023, "Secrets of RLHF in Large Language Models Part I: PPO"): ``trl.GRPOConfig``
plus the trick flags, the critic's settings, the ptx term and the collapse alarm, with PPO-max's components on by
default."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import trl

from ..config import TrickArguments
from ..seams import single_generation_allowed

CRITIC_INIT_CHOICES = ("reward_model", "policy")

# Settings that reproduce each source (docs/ppo_max.md, "Paper vs released code"). Sampling and batch settings are
# per process for one process: 128 prompts sampled per round, trained in 4 minibatches of 32, one sample each.
_COMMON_SETTINGS = {
    "learning_rate": 5e-7,
    "max_grad_norm": 1.0,
    "temperature": 0.8,
    "top_p": 0.9,
    "repetition_penalty": 1.1,
    "num_generations": 1,
    "per_device_train_batch_size": 32,
    "steps_per_generation": 4,
    "gamma": 1.0,
    "epsilon": 0.2,
    "value_clip": 0.2,
}
PAPER_SETTINGS = MappingProxyType(
    {
        **_COMMON_SETTINGS,
        # §5.3-5.4 and §6 of the paper: reward normalization + clipping, η = 0.05, λ = 0.9, critic LR 1.65e-6.
        "reward_norm": "running",
        "reward_clip": 0.3,
        "kl_coef": 0.05,
        "gae_lambda": 0.9,
        "critic_learning_rate": 1.65e-6,
        "critic_init": "reward_model",
    }
)
"""PPO-max as the paper's text describes it (pass as ``PPOMaxConfig(output_dir=..., **PAPER_SETTINGS)``)."""

CODE_SETTINGS = MappingProxyType(
    {
        **_COMMON_SETTINGS,
        # OpenLMLab/MOSS-RLHF `train_ppo.py` defaults and the released English script: reward *scaling* only (no
        # normalization, no clip), η = 0.01 (the code's own default is 0.02), λ = 0.95, critic LR 1.5e-6.
        "reward_norm": "none",
        "reward_scale": True,
        "reward_clip": None,
        "kl_coef": 0.01,
        "gae_lambda": 0.95,
        "critic_learning_rate": 1.5e-6,
        "critic_init": "reward_model",
    }
)
"""PPO-max as the released MOSS-RLHF code and English training script run it."""


@dataclass
class PPOMaxConfig(TrickArguments, trl.GRPOConfig):
    r"""
    ``trl.GRPOConfig`` with PPO-max's components on by default (Zheng et al. 2023, arXiv 2307.04964, Fig. 5 and §5.4):
    token-level k1 KL penalty in the reward (η = 0.05, §6), reward normalization with running moments and clipping
    (δ = 0.3, Eq. 18 and Fig. 6), GAE (γ = 1, λ = 0.9), the clipped surrogate per token, value-loss clipping
    (ε_v = 0.2), a critic initialised from the reward model, and global gradient clipping (`max_grad_norm=1.0`).
    Each component has its own flag and can be switched off: `kl_coef=None`, `reward_norm="none"`, `reward_clip=None`,
    `gae_lambda=1.0` (Monte-Carlo returns minus the value baseline), `value_clip=None`, `critic_init="policy"`,
    `max_grad_norm=0`. `PAPER_SETTINGS` and `CODE_SETTINGS` reproduce the paper's text and the released code.

    GRPO's options keep working (`epsilon`/`epsilon_high`, `num_iterations`, `steps_per_generation`, `loss_type`,
    generation backends). GRPO's own reward scaling (`scale_rewards`) and KL in the loss (`beta`) must stay off: the
    advantages come from the critic and the KL is in the reward.

    > Parameters that control the critic

    critic_model_path (`str` or `None`, *optional*, defaults to `None`):
        Model id or path the critic is loaded from: a reward model (sequence classification) or a causal LM. Its
        backbone is loaded into `AutoModelForTokenClassification(num_labels=1)`; a reward model's `score` head becomes
        the value head. `None` follows `critic_init`.
    critic_init (`str`, *optional*, defaults to `"reward_model"`):
        Where the critic starts when `critic_model_path` is `None`. `"reward_model"`: the first reward model among
        `reward_funcs` (PPO-max, §5.4); with only reward functions, falls back to the policy with a warning.
        `"policy"`: the policy's checkpoint with a fresh value head.
    critic_learning_rate (`float`, *optional*, defaults to `1.65e-6`):
        Learning rate of the critic's own AdamW (paper 1.65e-6, code 1.5e-6). It follows the policy's schedule:
        lr_critic(t) = critic_learning_rate · lr_policy(t) / learning_rate.
    critic_max_grad_norm (`float` or `None`, *optional*, defaults to `None`):
        Gradient-norm clip of the critic; `None` uses `max_grad_norm` (global gradient clipping, PPO-max); `0` is off.
    critic_warmup_steps (`int`, *optional*, defaults to `0`):
        Critic pre-training (PPO-max, §5.4): for this many optimizer steps the critic learns while the actor is frozen.
    value_clip (`float` or `None`, *optional*, defaults to `0.2`):
        ε_v of value-loss clipping, V_clip = V_old + clip(V - V_old, ±ε_v); `None` is the plain squared error.

    > Parameters that control the pretraining-loss mix (ptx)

    ptx_coef (`float`, *optional*, defaults to `0.0`):
        λ of the ptx term λ·E[-log π(x_pretrain)] (paper Eq. 17); needs `ptx_dataset` in the trainer. `0` is off.
    ptx_batch_size (`int` or `None`, *optional*, defaults to `None`):
        Texts per micro-batch for the ptx term; `None` uses `per_device_train_batch_size`.
    ptx_max_length (`int`, *optional*, defaults to `256`):
        Texts are truncated to this many tokens.
    ptx_text_field (`str`, *optional*, defaults to `"text"`):
        Column of `ptx_dataset` holding the text.
    """

    # --- critic -------------------------------------------------------------------------------------------------
    critic_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Model id or path of the critic's starting point (a reward model or a causal LM). None follows "
            "critic_init."
        },
    )
    critic_init: str = field(
        default="reward_model",
        metadata={
            "help": "Critic initialisation when critic_model_path is None: 'reward_model' (PPO-max; falls back to the "
            "policy when the rewards are plain functions) or 'policy'.",
            "choices": list(CRITIC_INIT_CHOICES),
        },
    )
    critic_learning_rate: float = field(
        default=1.65e-6,
        metadata={"help": "Critic learning rate (PPO-max paper 1.65e-6, MOSS-RLHF code 1.5e-6); follows the policy's "
                  "schedule."},
    )  # fmt: skip
    critic_max_grad_norm: float | None = field(
        default=None,
        metadata={
            "help": "Gradient-norm clip of the critic. None = max_grad_norm (global gradient clipping); 0 = off."
        },
    )
    critic_warmup_steps: int = field(
        default=0,
        metadata={"help": "Critic pre-training: optimizer steps during which only the critic learns (actor frozen)."},
    )
    value_clip: float | None = field(
        default=0.2, metadata={"help": "Value-loss clipping ε_v (PPO-max 0.2). None = plain squared error."}
    )
    # --- ptx ------------------------------------------------------------------------------------------------------
    ptx_coef: float = field(
        default=0.0,
        metadata={"help": "Coefficient λ of the pretraining loss mixed into the policy loss (paper Eq. 17). 0 = off."},
    )
    ptx_batch_size: int | None = field(
        default=None, metadata={"help": "Texts per micro-batch for the ptx term. None = per_device_train_batch_size."}
    )
    ptx_max_length: int = field(default=256, metadata={"help": "Truncate ptx texts to this many tokens."})
    ptx_text_field: str = field(default="text", metadata={"help": "Column of ptx_dataset that holds the text."})
    # --- presets of inherited fields (PPO-max, Zheng et al. 2023) ----------------------------------------------------
    reward_norm: str = field(
        default="running",
        metadata={"help": "Reward normalization: 'none', 'batch' or 'running' (PPO-max: running moments, Eq. 18)."},
    )
    reward_clip: float | None = field(
        default=0.3,
        metadata={"help": "Clip normalized rewards to ±reward_clip (PPO-max δ = 0.3, stable in Fig. 6). None = off."},
    )
    kl_coef: float | None = field(
        default=0.05,
        metadata={"help": "Token-level KL coefficient η in the reward (paper §6: 0.05; code: 0.02). None = off."},
    )
    advantage_estimator: str | None = field(
        default="gae", metadata={"help": "Advantage estimator; PPO-max uses 'gae' with the critic's values."}
    )
    gae_lambda: float = field(default=0.9, metadata={"help": "λ of GAE (paper 0.9, code 0.95; 1.0 = MC returns)."})
    num_generations: int | None = field(
        default=1, metadata={"help": "Completions per prompt (PPO-max samples one; the critic is the baseline)."}
    )
    loss_type: str = field(
        default="bnpo",
        metadata={"help": "GRPO aggregation of the clipped surrogate; 'bnpo' = token mean over the micro-batch, as "
                  "MOSS-RLHF's masked_mean."},
    )  # fmt: skip
    scale_rewards: str = field(
        default="none",
        metadata={
            "help": "GRPO's reward scaling; must stay 'none' (PPO-max normalizes rewards with running moments)."
        },
    )
    learning_rate: float = field(
        default=5e-7, metadata={"help": "Policy learning rate (PPO-max paper and code: 5e-7)."}
    )

    def ablation_switches(self) -> dict:
        """PPO-max's components beside the tricks: value clipping and the critic's initialisation.

        GAE stays: without it the critic has no target (the trainer refuses other estimators).
        """
        switches = super().ablation_switches()
        if self.value_clip is not None:
            switches["value_clip"] = {"value_clip": None}
        if self.critic_model_path is not None:
            # The critic from the policy instead of the given reward model (PPO-max initialises it from the RM).
            switches["critic_from_reward_model"] = {"critic_model_path": None, "critic_init": "policy"}
        return switches

    def __post_init__(self) -> None:
        if self.critic_init not in CRITIC_INIT_CHOICES:
            raise ValueError(
                f"critic_init={self.critic_init!r} is not a valid choice. Use one of {CRITIC_INIT_CHOICES}"
            )
        # PPO-max samples one completion per prompt: the critic, not the group, is the baseline.
        with single_generation_allowed(self):
            super().__post_init__()
        if self.scale_rewards not in ("none", False):
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r} would have no effect: PPO-max's advantages come from GAE on "
                "the critic. Set scale_rewards='none' and use reward_norm/reward_scale."
            )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r} is not supported: PPO-max sums the "
                "weighted rewards first. Set multi_objective_aggregation='sum_then_normalize'."
            )
        if self.loss_type == "vespo" or self.off_policy_mask_threshold is not None:
            raise ValueError(
                "loss_type='vespo' and off_policy_mask_threshold assume sequence-level advantages; GAE gives "
                "token-level ones. Use another loss_type (e.g. 'bnpo', 'dapo', 'grpo') and "
                "off_policy_mask_threshold=None."
            )
        if self.value_clip is not None and not self.value_clip > 0:
            raise ValueError(f"value_clip={self.value_clip} must be positive, or None for the unclipped value loss")
        if not self.critic_learning_rate > 0:
            raise ValueError(f"critic_learning_rate={self.critic_learning_rate} must be positive")
        if self.critic_max_grad_norm is not None and self.critic_max_grad_norm < 0:
            raise ValueError(f"critic_max_grad_norm={self.critic_max_grad_norm} must be >= 0 (0 = off) or None")
        if self.critic_warmup_steps < 0:
            raise ValueError(f"critic_warmup_steps={self.critic_warmup_steps} must be >= 0")
        if self.ptx_coef < 0:
            raise ValueError(f"ptx_coef={self.ptx_coef} must be >= 0 (0 = off)")
        if self.ptx_batch_size is not None and self.ptx_batch_size < 1:
            raise ValueError(f"ptx_batch_size={self.ptx_batch_size} must be >= 1, or None")
        if self.ptx_max_length < 2:
            raise ValueError(f"ptx_max_length={self.ptx_max_length} must be >= 2 (a next-token loss needs two tokens)")
