"""Advantage estimators (stage 3). Exactly one runs per trainer; ``advantage_estimator`` picks it by name.

Each estimator turns the (already transformed) scalar rewards into advantages for this process's rows. Baseline
estimators give sequence-level advantages ``(B,)``; when KL shaping has put per-token terms into
``rollout.dense_rewards``, or when the trainer asks for token-level advantages (:func:`token_level_estimator`), the
advantage becomes token-level ``(B, T)``: the baselined outcome reward is placed at the last token and the per-token
rewards-to-go are added (γ = 1 by default; REINFORCE++ Eq. 7).

The level decides how ``advantage_whiten`` weighs the advantages: every active entry counts once, so (B, T)
advantages are whitened over tokens (REINFORCE++, OpenRLHF, verl) and (B,) advantages over sequences.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..functional import (
    MovingAverageBaseline,
    discounted_returns,
    gae_advantages,
    group_mean_advantages,
    moving_average_advantages,
    outcome_token_rewards,
    raft_advantages,
    rloo_advantages,
    vanilla_reinforce_advantages,
)
from ..hookspecs import hookimpl
from ..types import AdvantageEstimator, Rollout, Trick, TrickContext


class _BaselineEstimator(AdvantageEstimator):
    """Shared tail: a scalar baseline-subtracted reward, made token-level when per-token rewards exist or when the
    estimator's ``level`` is ``"token"`` (set per instance by ``level=`` or :func:`token_level_estimator`)."""

    def __init__(self, args: Any = None, gamma: float | None = None, level: str | None = None) -> None:
        super().__init__(args)
        self.gamma = gamma if gamma is not None else getattr(args, "gamma", 1.0)
        if level is not None:
            if level not in ("sequence", "token"):
                raise ValueError(f"{self.name}: level must be 'sequence' or 'token', got {level!r}")
            self.level = level

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return cls(args, **kwargs)

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        raise NotImplementedError

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        advantages = rollout.local(self.scalar_advantages(rollout, ctx))
        if rollout.dense_rewards is not None or self.level == "token":
            advantages = token_level_returns(advantages, rollout, self.gamma)
        return rollout.replace(advantages=advantages)


def token_level_estimator(estimator: AdvantageEstimator | None) -> AdvantageEstimator | None:
    """Make ``estimator`` give token-level (B, T) advantages, for trainers whose algorithm is defined per token.

    REINFORCE++ and REINFORCE++-baseline whiten over all active tokens (Hu 2025, v1 Eq. 8 / v9 Eq. 7; OpenRLHF and
    verl do the same): a completion of n tokens must count n times, whatever the KL placement. A baseline estimator
    is switched to ``level="token"`` (its scalar advantage spread as rewards-to-go, constant over the completion
    when γ = 1 and no per-token reward exists); an estimator that is token-level already is returned unchanged.
    """
    if estimator is None or estimator.level == "token":
        return estimator
    if isinstance(estimator, _BaselineEstimator):
        estimator.level = "token"
        return estimator
    raise ValueError(
        f"advantage estimator {estimator.name!r} gives sequence-level (B,) advantages, but this trainer whitens "
        "advantages per token and needs (B, T) ones. Give the estimator class level = 'token' and return (B, T) "
        "advantages from apply, or use a built-in estimator."
    )


def token_level_returns(outcome: Tensor, rollout: Rollout, gamma: float) -> Tensor:
    """Rewards-to-go of (outcome at the last token + dense per-token rewards), REINFORCE++ Eq. 7 (v1). The outcome
    sits on the last active token, and holes in the mask (tool outputs) are transparent (``discounted_returns``)."""
    if rollout.completion_mask is None:
        raise ValueError("token-level advantages need the completion mask; the trainer gave none")
    mask = rollout.completion_mask
    token_rewards = outcome_token_rewards(outcome, mask)
    if rollout.dense_rewards is not None:
        token_rewards = token_rewards + rollout.dense_rewards
    return discounted_returns(token_rewards, mask, gamma=gamma)


class RLOOEstimator(_BaselineEstimator):
    """A_i = R_i - mean_{j≠i} R_j over the k samples of a prompt (Ahmadian et al. 2024, §2.3)."""

    name = "rloo"
    summary = "Leave-one-out baseline over the other samples of the same prompt (NaN-aware, as TRL)."
    source = "Ahmadian et al. 2024, Back to Basics, §2.3"

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        return rloo_advantages(rollout.rewards, rollout.num_generations)


class GroupMeanEstimator(_BaselineEstimator):
    """A_i = R_i - mean_group(R) without dividing by the std (REINFORCE++-baseline, Hu 2025 v9 Eq. 6)."""

    name = "group_mean"
    summary = "Subtract the mean reward of the prompt's group (no std scaling)."
    source = "Hu 2025, REINFORCE++-baseline, v9 Eq. 6"

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        return group_mean_advantages(rollout.rewards, rollout.num_generations)


class ReinforceEstimator(_BaselineEstimator):
    """A_t = Σ_{i≥t} γ^{i-t} r_i, no baseline, token-level (REINFORCE++, Hu 2025 v1 Eq. 7)."""

    name = "reinforce"
    level = "token"
    summary = "Token-level rewards-to-go of the outcome and per-token rewards, no baseline (REINFORCE++)."
    source = "Hu 2025, REINFORCE++, v1 Eq. 7 / v9 Eq. 4"

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        return rollout.rewards


class MovingAverageEstimator(_BaselineEstimator):
    """A_i = R_i - b_MA, b_MA the running mean of past rewards (Back to Basics "REINFORCE w/ baseline", Eqs. 7-8)."""

    name = "moving_average"
    summary = "Subtract a moving-average baseline of the rewards of earlier batches."
    source = "Ahmadian et al. 2024, Back to Basics, Eqs. 7-8; Williams 1992"
    # The baseline is a moving average of the weighted reward sum, with this decay.
    state_settings = ("baseline_decay", "reward_weights")

    def __init__(self, args: Any = None, gamma: float | None = None, decay: float | None = None) -> None:
        super().__init__(args, gamma=gamma)
        decay = decay if decay is not None else getattr(args, "baseline_decay", None)
        self.baseline = MovingAverageBaseline(decay=decay)

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        # The baseline of a batch is built from earlier batches only, so it does not depend on the batch's actions.
        # The rewards are the gathered global batch, so no collective is needed for the baseline to agree.
        baseline = self.baseline.baseline_for(rollout.rewards)
        advantages = moving_average_advantages(rollout.rewards, baseline)
        self.baseline.update(rollout.rewards)
        ctx.log("baseline", float(baseline))
        return advantages

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.baseline.load_state_dict(state["baseline"])


class RAFTEstimator(_BaselineEstimator):
    """A_i = 1 for the best of the k samples of a prompt, 0 for the others: reward-ranked fine-tuning, i.e. SFT on
    the best-of-k (Dong et al. 2023; a baseline in Ahmadian et al. 2024, Table 1). Ties go to the first best sample."""

    name = "raft"
    summary = "Advantage 1 for the best of the prompt's k samples (first on ties), 0 for the rest: SFT on best-of-k."
    source = "Dong et al. 2023, RAFT; Ahmadian et al. 2024, Back to Basics, Table 1"

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        return raft_advantages(rollout.rewards, rollout.num_generations)


class VanillaEstimator(_BaselineEstimator):
    """A_i = R_i, the raw (shaped) sequence reward with no baseline: vanilla REINFORCE (Williams 1992; "Vanilla PG"
    in Ahmadian et al. 2024, Table 1). Sequence-level, unlike ``reinforce`` (token-level rewards-to-go)."""

    name = "vanilla"
    summary = "The raw (shaped) sequence reward as the advantage, no baseline (vanilla REINFORCE)."
    source = "Williams 1992, REINFORCE; Ahmadian et al. 2024, Back to Basics, Table 1"

    def scalar_advantages(self, rollout: Rollout, ctx: TrickContext) -> Tensor:
        return vanilla_reinforce_advantages(rollout.rewards)


class GAEEstimator(AdvantageEstimator):
    """Generalized advantage estimation with a critic: A_t = Σ (γλ)^l δ_{t+l} (Schulman et al. 2016)."""

    name = "gae"
    level = "token"
    summary = "GAE(γ, λ) from the critic's values; also sets the returns the critic regresses on."
    source = "Schulman et al. 2016, GAE; Zheng et al. 2023 (PPO-max)"

    def __init__(self, args: Any = None, gamma: float | None = None, lam: float | None = None) -> None:
        super().__init__(args)
        self.gamma = gamma if gamma is not None else getattr(args, "gamma", 1.0)
        self.lam = lam if lam is not None else getattr(args, "gae_lambda", 0.95)

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        return cls(args, **kwargs)

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        if rollout.values is None or rollout.completion_mask is None:
            raise ValueError("advantage_estimator='gae' needs critic values; use it with a trainer that has a critic")
        mask = rollout.completion_mask
        token_rewards = outcome_token_rewards(rollout.local(rollout.rewards), mask)
        if rollout.dense_rewards is not None:
            token_rewards = token_rewards + rollout.dense_rewards
        advantages, returns = gae_advantages(token_rewards, rollout.values, mask, gamma=self.gamma, lam=self.lam)
        return rollout.replace(advantages=advantages, returns=returns)


@hookimpl
def trl_basics_register_advantage_estimators(register):
    register(RLOOEstimator)
    register(GroupMeanEstimator)
    register(ReinforceEstimator)
    register(MovingAverageEstimator)
    register(RAFTEstimator)
    register(VanillaEstimator)
    register(GAEEstimator)
