"""The advantage estimators (stage 3) on hand-computed rollouts."""

import math

import pytest
import torch
from helpers import run_pipeline

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline


def test_reinforce_pp_baseline_anchor(registry):
    # algorithms.md §9: r = [1, 0 | 1, 1] → A' = [0.5, -0.5, 0, 0] → whitened (population std) [√2, -√2, 0, 0].
    args = TrickArguments(advantage_estimator="group_mean", whiten_advantages=True)
    _, out = run_pipeline(args, Rollout(rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]), num_generations=2), registry)
    torch.testing.assert_close(out.advantages, torch.tensor([math.sqrt(2), -math.sqrt(2), 0.0, 0.0]))


def test_rloo_three_prompts_four_samples(registry):
    # Legacy [k, B] layout [[1,2,3],[2,3,4],[5,6,7],[8,9,10]] (column = prompt), grouped per prompt as TRL 1.16 does.
    legacy = torch.tensor([[1.0, 2, 3], [2, 3, 4], [5, 6, 7], [8, 9, 10]])
    rewards = legacy.T.reshape(-1)  # [1,2,5,8 | 2,3,6,9 | 3,4,7,10]
    _, out = run_pipeline(
        TrickArguments(), Rollout(rewards=rewards, num_generations=4), registry, default_estimator="rloo"
    )
    per_group = torch.tensor([-4.0, -8 / 3, 4 / 3, 16 / 3])
    torch.testing.assert_close(out.advantages, per_group.repeat(3))


def test_moving_average_baseline_uses_only_earlier_batches(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(advantage_estimator="moving_average"), registry)
    first = pipeline.process(Rollout(rewards=torch.tensor([1.0, 3.0]), num_generations=1), TrickContext())
    torch.testing.assert_close(first.advantages, torch.tensor([-1.0, 1.0]))  # no history yet: batch mean 2
    second = pipeline.process(Rollout(rewards=torch.tensor([5.0, 7.0]), num_generations=1), TrickContext())
    torch.testing.assert_close(second.advantages, torch.tensor([3.0, 5.0]))  # baseline 2 from the first batch
    assert pipeline.state_dict()["moving_average"]["baseline"]["value"] == pytest.approx(4.0)


def test_gae_estimator_sets_advantages_and_returns(registry):
    # algorithms.md §9: r = [0, 0, 1], V = 0.5, γ = 1, λ = 0.95 → A = [0.45125, 0.475, 0.5], R = A + V.
    args = TrickArguments(advantage_estimator="gae", gae_lambda=0.95)
    rollout = Rollout(
        rewards=torch.tensor([1.0]),
        num_generations=1,
        completion_mask=torch.ones(1, 3),
        values=torch.full((1, 3), 0.5),
    )
    _, out = run_pipeline(args, rollout, registry)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.45125, 0.475, 0.5]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0.95125, 0.975, 1.0]]))
