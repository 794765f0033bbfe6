"""Pure-torch functional core of trl_basics: KL estimators, reward processing, advantages, statistics, losses and
KL controllers. No trl/transformers imports; distributed statistics go through an injected ``reduce_fn``."""

from .advantages import (
    discounted_cumsum,
    discounted_returns,
    gae_advantages,
    group_mean_advantages,
    interior_holes,
    moving_average_advantages,
    raft_advantages,
    rloo_advantages,
    vanilla_reinforce_advantages,
)
from .controllers import AdaptiveKLController, FixedKLController
from .kl import (
    KL_ESTIMATORS,
    clamped_kl,
    kl_estimate,
    kl_importance_weights,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_plus,
    kl_loss,
    kl_sequence_penalty,
    kl_token_penalty,
)
from .losses import clipped_policy_loss, clipped_value_loss, sequence_clipped_policy_loss
from .rewards import clip_rewards, last_token_index, normalize_rewards, outcome_token_rewards, scale_rewards
from .stats import (
    MovingAverageBaseline,
    RunningMoments,
    explained_variance,
    masked_mean,
    masked_moments,
    masked_sum,
    masked_whiten,
)

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "MovingAverageBaseline",
    "RunningMoments",
    "clamped_kl",
    "clip_rewards",
    "clipped_policy_loss",
    "clipped_value_loss",
    "discounted_cumsum",
    "discounted_returns",
    "explained_variance",
    "gae_advantages",
    "group_mean_advantages",
    "interior_holes",
    "kl_estimate",
    "kl_importance_weights",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_k3_plus",
    "kl_loss",
    "kl_sequence_penalty",
    "kl_token_penalty",
    "last_token_index",
    "masked_mean",
    "masked_moments",
    "masked_sum",
    "masked_whiten",
    "moving_average_advantages",
    "normalize_rewards",
    "outcome_token_rewards",
    "raft_advantages",
    "rloo_advantages",
    "scale_rewards",
    "sequence_clipped_policy_loss",
    "vanilla_reinforce_advantages",
]
