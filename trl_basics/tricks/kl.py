"""KL shaping (stage 2): the KL estimators k1/k2/k3/k3_plus and the trick that places β·KL in the reward or the loss.

One trick covers every KL option, so the place where KL acts is a single visible ``if`` on ``placement``:
- ``token_reward``: -β·KL_t joins the per-token rewards (REINFORCE++ v1 Eq. 4; PPO-max; Ziegler et al. 2019);
- ``sequence_reward``: -β·Σ_t KL_t is subtracted from the sequence reward (Back to Basics Eq. 3);
- ``loss``: β·mean_t KL_t is added to the policy loss (REINFORCE++-baseline, v9 Eq. 8, with k2), each KL_t weighted
  by π_θ/π_old with ``use_bias_correction_kl`` (DeepSeek-V3.2 Eq. 8).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from ..functional import (
    AdaptiveKLController,
    FixedKLController,
    clamped_kl,
    kl_importance_weights,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_plus,
    kl_loss,
    kl_sequence_penalty,
    kl_token_penalty,
)
from ..hookspecs import hookimpl
from ..types import LossInputs, Requirements, Rollout, Stage, Trick, TrickContext


class KLShaping(Trick):
    """Penalise divergence from the reference policy with a fixed or adaptive coefficient β."""

    name = "kl_shaping"
    stage = Stage.KL
    flag = "kl_coef"
    off_flags = MappingProxyType({"kl_coef": None, "kl_target": None})
    order = 10
    summary = (
        "KL penalty to the reference policy: estimator k1/k2/k3/k3_plus, in the token reward, sequence reward or "
        "loss (optionally importance-corrected there)."
    )
    source = (
        "Ziegler et al. 2019 (adaptive β); Ahmadian et al. 2024 Eq. 3 (sequence); Hu 2025 REINFORCE++ Eqs. 4, 8 "
        "(token, k2 loss); Zheng et al. 2023 (PPO-max token KL)"
    )

    def __init__(
        self,
        args: Any = None,
        estimator_fn=kl_k1,
        estimator: str = "k1",
        placement: str = "token_reward",
        coef: float = 0.05,
        target: float | None = None,
        horizon: int = 10000,
        clamp: float | None = None,
        log_ratio_clamp: float | None = None,
        bias_correction: bool = False,
    ) -> None:
        super().__init__(args)
        self.bias_correction = bias_correction
        self.estimator_fn = estimator_fn
        self.estimator = estimator
        self.placement = placement
        self.clamp = clamp
        self.log_ratio_clamp = log_ratio_clamp
        self.initial_coef = coef
        self.controller = (
            FixedKLController(coef) if target is None else AdaptiveKLController(coef, target=target, horizon=horizon)
        )

    @classmethod
    def from_args(cls, args: Any, registry: Any = None, **kwargs: Any) -> Trick | None:
        if args.kl_coef is None:
            return None
        if registry is None:
            from ..plugins import Registry

            registry = Registry.from_plugin_manager()
        return cls(
            args,
            estimator_fn=registry.kl_estimator(args.kl_estimator),
            estimator=args.kl_estimator,
            placement=args.kl_placement,
            coef=args.kl_coef,
            target=args.kl_target,
            horizon=args.kl_horizon,
            clamp=args.kl_clamp,
            log_ratio_clamp=getattr(args, "kl_clamp_log_ratio", None),
            bias_correction=bool(getattr(args, "use_bias_correction_kl", False)),
        )

    # The controller's β and the KL it was steered by: the measured KL depends on the estimator and its clamps.
    state_settings = (
        "kl_coef",
        "kl_target",
        "kl_horizon",
        "kl_estimator",
        "kl_clamp",
        "kl_clamp_log_ratio",
        "kl_placement",
    )

    def requirements(self) -> Requirements:
        """π_old and π_ref per token before the advantages; a reference model even when the parent's β is 0, also
        with a coefficient of 0 (the KL is still measured and logged, and an adaptive coefficient may grow); π_ref
        (and π_old, for the bias correction) in the loss when the KL is placed there."""
        in_loss = self.placement == "loss"
        return Requirements(
            sampling_logprobs=True,
            reference_logprobs=True,
            reference_model=True,
            loss_reference_logprobs=in_loss,
            loss_sampling_logprobs=in_loss,
            kl_metric=f"{self.estimator}_sequence_mean",
        )

    @property
    def coef(self) -> float:
        return float(self.controller.value)

    def per_token_kl(self, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> Tensor:
        """KL_t from the estimator, with ℓ_t clamped to ±``log_ratio_clamp`` before it (verl's k3: 20) and the
        estimate clamped to ±``clamp`` after it (OpenRLHF: 10 for every estimator; verl's k3: 10); 0 where masked."""
        return clamped_kl(self.estimator_fn, logprobs, ref_logprobs, mask, self.clamp, self.log_ratio_clamp)

    def apply(self, rollout: Rollout, ctx: TrickContext) -> Rollout:
        if rollout.logprobs is None or rollout.ref_logprobs is None or rollout.completion_mask is None:
            raise ValueError(
                "KL shaping needs the rollout's per-token log-probs and reference log-probs, but the trainer did not "
                "provide them. Use a trl_basics trainer (it computes them when kl_coef is set), or set kl_coef=None."
            )
        mask = rollout.completion_mask.to(rollout.logprobs.dtype)
        kl = self.per_token_kl(rollout.logprobs, rollout.ref_logprobs, mask)
        beta = self.coef

        if self.placement == "token_reward":
            penalty = kl_token_penalty(kl, mask, beta)  # -β·KL_t
            dense = penalty if rollout.dense_rewards is None else rollout.dense_rewards + penalty
            rollout = rollout.replace(dense_rewards=dense)
        elif self.placement == "sequence_reward":
            # Rewards are global, the log-probs local: gather the per-sequence penalty to match (as TRL RLOO does).
            penalty = ctx.gather(kl_sequence_penalty(kl, mask, beta))  # -β·Σ_t KL_t
            rollout = rollout.replace(rewards=rollout.rewards + penalty)
        # placement == "loss": the rollout is left alone; `loss` adds the term during the update.

        # The controller and the metric see the global mean of the per-sequence KL sum (Ziegler et al. 2019).
        # The sequence count is made on kl's device (a CPU tensor cannot be stacked with a GPU one).
        sequences = torch.full((), kl.shape[0], dtype=kl.dtype, device=kl.device)
        totals = ctx.reduce_sum(torch.stack([kl.sum(), sequences]))
        # A tensor: the metric is read with the step's others; only the adaptive controller reads it at once.
        mean_sequence_kl = totals[0] / totals[1].clamp(min=1.0)
        num_samples = int(rollout.rewards.shape[0])
        ctx.log(f"{self.estimator}_sequence_mean", mean_sequence_kl)
        ctx.log("coef", beta)
        self.controller.update(mean_sequence_kl, num_samples)
        return rollout

    def loss(self, inputs: LossInputs, ctx: TrickContext) -> Tensor | None:
        if self.placement != "loss":
            return None
        if inputs.ref_logprobs is None:
            raise ValueError("kl_placement='loss' needs reference log-probs in the loss inputs; the trainer gave none")
        mask = inputs.completion_mask.to(inputs.logprobs.dtype)
        kl = self.per_token_kl(inputs.logprobs, inputs.ref_logprobs, mask)
        if self.bias_correction:
            # use_bias_correction_kl: weight by ρ_t = π_θ/π_old (differentiable), so the sampled tokens estimate the
            # KL of the current policy; without old log-probs the step is on-policy and ρ_t = 1 in value.
            kl = kl * kl_importance_weights(inputs.logprobs, inputs.old_logprobs, mask)
        # Token mean over the accumulation window on every process (the micro-batch's own without a normaliser).
        return kl_loss(kl, mask, self.coef, normalizer=inputs.token_normalizer)

    def state_dict(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])


@hookimpl
def trl_basics_register_tricks(register):
    register(KLShaping)


@hookimpl
def trl_basics_register_kl_estimators(register):
    register("k1", kl_k1)
    register("k2", kl_k2)
    register("k3", kl_k3)
    register("k3_plus", kl_k3_plus)
