"""KL shaping (stage 2) on hand-computed rollouts: placements, token-KL returns, the adaptive coefficient."""

import pytest
import torch
from helpers import one_token_rollout, run_pipeline

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline


def test_reinforce_pp_token_kl_returns(registry):
    # algorithms.md §9: k1 KL [0.1, 0.2, 0.3], β = 0.5, r = 1 at EOS → returns [0.7, 0.75, 0.85].
    args = TrickArguments(kl_coef=0.5, kl_estimator="k1", kl_placement="token_reward", advantage_estimator="reinforce")
    rollout = Rollout(
        rewards=torch.tensor([1.0]),
        num_generations=1,
        completion_mask=torch.ones(1, 3),
        logprobs=torch.tensor([[0.1, 0.2, 0.3]]),
        ref_logprobs=torch.zeros(1, 3),
    )
    _, out = run_pipeline(args, rollout, registry)
    torch.testing.assert_close(out.dense_rewards, torch.tensor([[-0.05, -0.1, -0.15]]))
    torch.testing.assert_close(out.advantages, torch.tensor([[0.7, 0.75, 0.85]]))


@pytest.mark.parametrize("kl_placement", ["token_reward", "sequence_reward"])
def test_kl_placement_changes_where_the_penalty_lands(registry, kl_placement):
    args = TrickArguments(kl_coef=1.0, kl_placement=kl_placement, advantage_estimator="reinforce")
    rollout = Rollout(
        rewards=torch.tensor([1.0]),
        num_generations=1,
        completion_mask=torch.tensor([[1.0, 1.0, 0.0]]),
        logprobs=torch.tensor([[0.5, 0.25, 9.0]]),  # the masked third token must not count
        ref_logprobs=torch.zeros(1, 3),
    )
    _, out = run_pipeline(args, rollout, registry)
    if kl_placement == "token_reward":
        expected = torch.tensor([[1.0 - 0.75, 1.0 - 0.25, 0.0]])  # rewards-to-go of [-0.5, 1 - 0.25]
    else:
        expected = torch.tensor([[0.25, 0.25, 0.0]])  # the whole penalty moved into the outcome: 1 - 0.75
    torch.testing.assert_close(out.advantages, expected)


def test_adaptive_kl_coefficient_updates_after_each_round(registry):
    logged = {}
    ctx = TrickContext(log=logged.__setitem__)
    args = TrickArguments(kl_coef=0.1, kl_target=6.0, kl_horizon=10_000, kl_placement="sequence_reward")
    pipeline = TrickPipeline.from_args(args, registry)
    pipeline.process(one_token_rollout([0.0, 0.0], [12.0, 12.0]), ctx)
    assert logged["tricks/kl_shaping/coef"] == pytest.approx(0.1)  # this round used the initial β
    assert logged["tricks/kl_shaping/k1_sequence_mean"] == pytest.approx(12.0)
    # β ← β(1 + clip(12/6 - 1, ±0.2) · n/horizon) with n = 2 samples.
    assert pipeline.tricks[0].coef == pytest.approx(0.1 * (1 + 0.2 * 2 / 10_000))
