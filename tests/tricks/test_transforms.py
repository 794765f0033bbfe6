"""Reward and advantage transforms (stages 1 and 4) on hand-computed rollouts."""

import torch
from helpers import run_pipeline

from trl_basics import Rollout, TrickArguments


def test_reward_scaling_and_advantage_clipping(registry):
    args = TrickArguments(reward_scale=True, advantage_clip=0.5, advantage_estimator="rloo")
    _, out = run_pipeline(args, Rollout(rewards=torch.tensor([0.0, 2.0, 4.0, 6.0]), num_generations=2), registry)
    std = torch.tensor([0.0, 2.0, 4.0, 6.0]).std().item()  # running std after one batch = batch std (unbiased)
    # LOO on r/σ: [-2, 2, -2, 2]/σ = ±0.7746, clipped to ±0.5.
    assert 2 / std > 0.5
    torch.testing.assert_close(out.advantages, torch.tensor([-0.5, 0.5, -0.5, 0.5]))
