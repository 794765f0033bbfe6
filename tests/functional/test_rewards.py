"""Tests for trl_basics.functional.rewards."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_batch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_basics.functional import (
    clip_rewards,
    kl_token_penalty,
    last_token_index,
    normalize_rewards,
    outcome_token_rewards,
    scale_rewards,
)

NAN = float("nan")


def test_last_token_index_for_right_left_holes_and_empty() -> None:
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right padding
            [0, 0, 1, 1, 1],  # left padding
            [1, 0, 1, 0, 0],  # hole
            [0, 0, 0, 0, 0],  # empty
        ]
    )
    expected = [2, 4, 2, -1]
    assert last_token_index(mask).tolist() == expected
    assert last_token_index(mask.bool()).tolist() == expected
    assert last_token_index(mask.float()).tolist() == expected
    assert last_token_index(mask).dtype == torch.int64


def test_outcome_token_rewards_placement() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = outcome_token_rewards(torch.tensor([2.0, -1.0, 5.0]), mask)
    assert out.tolist() == [[0.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_reinforce_pp_token_rewards_anchor() -> None:
    # k1 KL [0.1, 0.2, 0.3], beta 0.5, r = 1 at EOS -> [-0.05, -0.1, 0.85]
    mask = torch.ones(1, 3)
    token_rewards = outcome_token_rewards(torch.tensor([1.0]), mask) + kl_token_penalty(
        torch.tensor([[0.1, 0.2, 0.3]]), mask, 0.5
    )
    assert token_rewards[0].tolist() == pytest.approx([-0.05, -0.1, 0.85])


def test_clip_rewards_anchor_and_nan() -> None:
    out = clip_rewards(torch.tensor([-20.0, 0.5, 20.0, NAN]), 10.0)
    assert out[:3].tolist() == [-10.0, 0.5, 10.0]
    assert math.isnan(out[3].item())
    with pytest.raises(ValueError, match="bound"):
        clip_rewards(torch.tensor([1.0]), 0.0)


def test_scale_and_normalize_rewards_keep_nan() -> None:
    rewards = torch.tensor([2.0, -4.0, NAN])
    scaled = scale_rewards(rewards, 2.0, eps=0.0)
    assert scaled[:2].tolist() == [1.0, -2.0] and math.isnan(scaled[2].item())
    normalized = normalize_rewards(rewards, torch.tensor(1.0), torch.tensor(3.0), eps=0.0)
    assert normalized[:2].tolist() == pytest.approx([1 / 3, -5 / 3]) and math.isnan(normalized[2].item())
    # eps keeps a zero std finite
    assert torch.isfinite(scale_rewards(rewards[:2], 0.0)).all()


def test_ppo_max_normalize_then_clip() -> None:
    rewards = torch.tensor([0.0, 10.0, 100.0])
    out = clip_rewards(normalize_rewards(rewards, 10.0, 10.0, eps=0.0), 0.3)
    assert out.tolist() == pytest.approx([-0.3, 0.0, 0.3])


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 5), length=st.integers(1, 6), prefix=st.booleans())
def test_outcome_reward_sums_to_reward_and_sits_on_last_active(
    seed: int, batch: int, length: int, prefix: bool
) -> None:
    rewards, mask, _ = random_batch(seed, batch, length, prefix_mask=prefix)
    rewards = rewards[:, 0]
    out = outcome_token_rewards(rewards, mask)
    has_active = mask.any(dim=-1)
    torch.testing.assert_close(out.sum(dim=-1), torch.where(has_active, rewards, 0.0))
    nonzero_cols = (out != 0).int().argmax(dim=-1)
    rows = has_active & (rewards != 0)
    assert torch.equal(nonzero_cols[rows], last_token_index(mask)[rows])
    assert (out[~mask] == 0).all()
