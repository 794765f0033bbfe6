"""Holes in the completion mask (tool outputs inside a completion), computed by hand.

The rule: a hole is transparent. The policy's tokens on either side are consecutive actions, so a hole spends no
discount (γ, γλ), carries no reward, no KL and no value, is not counted by any normaliser, and does not reset the
reward-to-go. Every expected number below is written out with its arithmetic; garbage at the holes (9.0, 7.0, 5.0,
±100, -50) must never show.

The two-turn rollout used throughout: mask [1, 1, 0, 0, 1, 1] (two policy tokens, a two-token tool output, two
policy tokens), outcome reward at the last policy token.
"""

from __future__ import annotations

import math

import pytest
import torch

from trl_basics.functional import (
    discounted_cumsum,
    discounted_returns,
    gae_advantages,
    group_mean_advantages,
    interior_holes,
    kl_estimate,
    kl_loss,
    kl_sequence_penalty,
    kl_token_penalty,
    last_token_index,
    masked_whiten,
    outcome_token_rewards,
    rloo_advantages,
)

F64 = torch.float64
TWO_TURNS = torch.tensor([[1, 1, 0, 0, 1, 1]], dtype=F64)
# Per-token KL; 9.0 at the holes is garbage that kl_token_penalty must drop.
KL = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.3, 0.4]], dtype=F64)
BETA = 0.5


def two_turn_token_rewards(outcome: float = 1.0) -> torch.Tensor:
    """r_t = outcome at the last policy token - β·KL_t at policy tokens, 0 at the holes:
    -0.5·[0.1, 0.2, -, -, 0.3, 0.4] = [-0.05, -0.1, 0, 0, -0.15, -0.2]; +1 at t = 5 -> [..., -0.15, 0.8]."""
    return outcome_token_rewards(torch.tensor([outcome], dtype=F64), TWO_TURNS) + kl_token_penalty(KL, TWO_TURNS, BETA)


def test_hole_index_helpers() -> None:
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0]])
    # Only the masked positions between two active ones are holes; leading and trailing ones are padding.
    assert interior_holes(mask).int().tolist() == [[0, 0, 0, 1, 1, 0, 0, 0]]


def test_outcome_reward_sits_on_the_last_policy_token_before_a_trailing_tool_output() -> None:
    # Policy, tool, policy, then a trailing tool output and right padding: t* = 5, the policy's last token.
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [5]
    assert outcome_token_rewards(torch.tensor([2.0]), mask).tolist() == [[0, 0, 0, 0, 0, 2.0, 0, 0, 0]]
    # The trailing tool output changes nothing: γ = 0.5 gives [0.25, 0.5, -, -, 1, 2] (hole skipped, see below).
    returns = discounted_returns(outcome_token_rewards(torch.tensor([2.0]), mask), mask, 0.5)
    assert returns.tolist() == [[0.25, 0.5, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0]]


def test_reinforce_pp_two_turns_gamma_one() -> None:
    token_rewards = two_turn_token_rewards()
    assert token_rewards.tolist()[0] == pytest.approx([-0.05, -0.1, 0.0, 0.0, -0.15, 0.8])
    # γ = 1: G_t = r - β Σ_{i>=t} KL_i over policy tokens only.
    # G_5 = 0.8; G_4 = -0.15 + 0.8 = 0.65; G_1 = -0.1 + 0.65 = 0.55; G_0 = -0.05 + 0.55 = 0.5 (= 1 - 0.5·1.0).
    returns = discounted_returns(token_rewards, TWO_TURNS, 1.0)
    assert returns.tolist()[0] == pytest.approx([0.5, 0.55, 0.0, 0.0, 0.65, 0.8])
    # Whitening over the 4 policy tokens: mean = 2.5/4 = 0.625, deviations [-0.125, -0.075, 0.025, 0.175],
    # Var = (0.015625 + 0.005625 + 0.000625 + 0.030625)/4 = 0.0525/4 = 0.013125.
    whitened = masked_whiten(returns, TWO_TURNS)
    scale = 1 / math.sqrt(0.013125 + 1e-8)
    assert whitened.tolist()[0] == pytest.approx([-0.125 * scale, -0.075 * scale, 0, 0, 0.025 * scale, 0.175 * scale])


def test_reinforce_pp_two_turns_gamma_below_one() -> None:
    # γ = 0.5, the hole spends no γ: G_5 = 0.8; G_4 = -0.15 + 0.5·0.8 = 0.25;
    # G_1 = -0.1 + 0.5·0.25 = 0.025 (γ per masked position would give -0.1 + 0.5³·0.25 = -0.06875);
    # G_0 = -0.05 + 0.5·0.025 = -0.0375.
    returns = discounted_returns(two_turn_token_rewards(), TWO_TURNS, 0.5)
    assert returns.tolist()[0] == pytest.approx([-0.0375, 0.025, 0.0, 0.0, 0.25, 0.8])
    # Exactly the completion with the tool output deleted.
    deleted = discounted_returns(torch.tensor([[-0.05, -0.1, -0.15, 0.8]], dtype=F64), torch.ones(1, 4), 0.5)
    assert deleted.tolist()[0] == pytest.approx([-0.0375, 0.025, 0.25, 0.8])


def test_discounted_cumsum_chunks_across_holes() -> None:
    # Holes that straddle chunk boundaries (chunk_size 2): x = 1 at the policy tokens 0, 3, 6 of
    # mask [1, 0, 0, 1, 0, 0, 1], γ = 0.5: y_6 = 1, y_3 = 1 + 0.5 = 1.5, y_0 = 1 + 0.5·1.5 = 1.75.
    mask = torch.tensor([[1, 0, 0, 1, 0, 0, 1]])
    x = torch.tensor([[1.0, 5.0, 5.0, 1.0, 5.0, 5.0, 1.0]], dtype=F64)
    for chunk_size in (1, 2, 3, 256):
        assert discounted_cumsum(x, mask, 0.5, chunk_size).tolist() == [[1.75, 0, 0, 1.5, 0, 0, 1.0]]


def test_reinforce_pp_baseline_two_turns() -> None:
    # One prompt, k = 2: row 0 the two-turn rollout (reward 1), row 1 a plain 3-token completion (reward 0).
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=F64)
    scalar = group_mean_advantages(torch.tensor([1.0, 0.0], dtype=F64), 2)
    assert scalar.tolist() == [0.5, -0.5]  # group mean 0.5
    token = discounted_returns(outcome_token_rewards(scalar, mask), mask, 1.0)
    assert token.tolist() == [[0.5, 0.5, 0, 0, 0.5, 0.5], [-0.5, -0.5, -0.5, 0, 0, 0]]
    # Whitening over the 7 policy tokens (4 × 0.5, 3 × -0.5; the holes are not counted):
    # mean = (2 - 1.5)/7 = 1/14; Var = 0.25 - 1/196 = 48/196 = 12/49, std = √12/7;
    # (0.5 - 1/14)·7/√12 = 3/√12 = √3/2 ≈ 0.866025; (-0.5 - 1/14)·7/√12 = -4/√12 ≈ -1.154701.
    # (Counting the two holes as zeros would give mean 0.5/9 and different values.)
    whitened = masked_whiten(token, mask)
    up, down = math.sqrt(3) / 2, -4 / math.sqrt(12)
    expected = torch.tensor([[up, up, 0, 0, up, up], [down, down, down, 0, 0, 0]], dtype=F64)
    torch.testing.assert_close(whitened, expected, atol=1e-7, rtol=0)
    # γ = 0.5: the baselined 0.5 at t = 5 reaches t = 4, 1, 0 with one factor each: [0.0625, 0.125, -, -, 0.25, 0.5].
    discounted = discounted_returns(outcome_token_rewards(scalar, mask), mask, 0.5)
    assert discounted[0].tolist() == [0.0625, 0.125, 0.0, 0.0, 0.25, 0.5]


def test_rloo_token_mode_two_turns() -> None:
    # k = 3, rewards [1, 0, 0.5]: A_i = R_i - mean of the other two = [1 - 0.25, 0 - 0.75, 0.5 - 0.5].
    scalar = rloo_advantages(torch.tensor([1.0, 0.0, 0.5], dtype=F64), 3)
    assert scalar.tolist() == [0.75, -0.75, 0.0]
    # Token mode for the two-turn row: 0.75 at t = 5, -β·KL at the policy tokens:
    # r = [-0.05, -0.1, 0, 0, -0.15, 0.75 - 0.2 = 0.55]; γ = 1:
    # G = [0.75 - 0.5·1.0, 0.75 - 0.5·0.9, -, -, 0.75 - 0.5·0.7, 0.55] = [0.25, 0.3, 0, 0, 0.4, 0.55].
    token_rewards = outcome_token_rewards(scalar[:1], TWO_TURNS) + kl_token_penalty(KL, TWO_TURNS, BETA)
    returns = discounted_returns(token_rewards, TWO_TURNS, 1.0)
    assert returns.tolist()[0] == pytest.approx([0.25, 0.3, 0.0, 0.0, 0.4, 0.55])
    # γ = 0.9: G_5 = 0.55; G_4 = -0.15 + 0.9·0.55 = 0.345; G_1 = -0.1 + 0.9·0.345 = 0.2105;
    # G_0 = -0.05 + 0.9·0.2105 = 0.13945.
    returns = discounted_returns(token_rewards, TWO_TURNS, 0.9)
    assert returns.tolist()[0] == pytest.approx([0.13945, 0.2105, 0.0, 0.0, 0.345, 0.55])


def test_gae_and_critic_targets_two_turns() -> None:
    # γ = 0.9, λ = 0.5 (γλ = 0.45); 7.0 and 5.0 at the holes are garbage.
    values = torch.tensor([[0.5, 0.4, 7.0, 7.0, 0.6, 0.8]], dtype=F64)
    rewards = torch.tensor([[0.0, 0.0, 5.0, 5.0, 0.0, 1.0]], dtype=F64)
    advantages, returns = gae_advantages(rewards, values, TWO_TURNS, gamma=0.9, lam=0.5)
    # δ over the policy tokens 0, 1, 4, 5 (token 1 bootstraps from V_4, not from a hole):
    # δ_5 = 1 + 0.9·0 - 0.8 = 0.2; δ_4 = 0 + 0.9·0.8 - 0.6 = 0.12;
    # δ_1 = 0 + 0.9·0.6 - 0.4 = 0.14; δ_0 = 0 + 0.9·0.4 - 0.5 = -0.14.
    # A_5 = 0.2; A_4 = 0.12 + 0.45·0.2 = 0.21; A_1 = 0.14 + 0.45·0.21 = 0.2345;
    # A_0 = -0.14 + 0.45·0.2345 = -0.034475.
    assert advantages.tolist()[0] == pytest.approx([-0.034475, 0.2345, 0.0, 0.0, 0.21, 0.2])
    # Critic targets R = A + V at the policy tokens, 0 at the holes:
    # [-0.034475 + 0.5, 0.2345 + 0.4, -, -, 0.21 + 0.6, 0.2 + 0.8].
    assert returns.tolist()[0] == pytest.approx([0.465525, 0.6345, 0.0, 0.0, 0.81, 1.0])


def test_token_level_kl_with_holes() -> None:
    # ℓ = logp - ref = [0.2, -0.5, -, -, 0.0, -0.5]; -50 at the holes is garbage.
    logp = torch.tensor([[-1.0, -2.0, -50.0, -50.0, -0.5, -1.5]], dtype=F64)
    ref = torch.tensor([[-1.2, -1.5, 0.0, 0.0, -0.5, -1.0]], dtype=F64)
    k1 = kl_estimate(logp, ref, "k1", mask=TWO_TURNS)
    assert k1.tolist()[0] == pytest.approx([0.2, -0.5, 0.0, 0.0, 0.0, -0.5])
    k2 = kl_estimate(logp, ref, "k2", mask=TWO_TURNS)  # ℓ²/2 = [0.02, 0.125, 0, 0, 0, 0.125]
    assert k2.tolist()[0] == pytest.approx([0.02, 0.125, 0.0, 0.0, 0.0, 0.125])
    # Token penalty -β·KL_t, β = 0.1: [-0.002, -0.0125, 0, 0, 0, -0.0125].
    assert kl_token_penalty(k2, TWO_TURNS, 0.1).tolist()[0] == pytest.approx([-0.002, -0.0125, 0, 0, 0, -0.0125])
    # Sequence penalty -β Σ_t KL_t = -0.1·(0.02 + 0.125 + 0 + 0.125) = -0.027 (garbage in a hole would not count).
    garbage = k2.clone()
    garbage[0, 2:4] = 100.0
    assert kl_sequence_penalty(garbage, TWO_TURNS, 0.1).tolist() == pytest.approx([-0.027])
    # KL loss: the token mean over the 4 policy tokens, 0.27/4 = 0.0675 (not 0.27/6 = 0.045).
    assert kl_loss(garbage, TWO_TURNS, 1.0).item() == pytest.approx(0.0675)


def test_whitening_ignores_holes() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0, -100.0, 3.0, 6.0]], dtype=F64)
    # Policy tokens [1, 2, 3, 6]: mean 3, deviations [-2, -1, 0, 3], Var = (4 + 1 + 0 + 9)/4 = 3.5.
    scale = 1 / math.sqrt(3.5 + 1e-8)
    assert masked_whiten(x, TWO_TURNS).tolist()[0] == pytest.approx([-2 * scale, -scale, 0, 0, 0, 3 * scale])
    assert masked_whiten(x, TWO_TURNS, scale=False).tolist()[0] == pytest.approx([-2.0, -1.0, 0, 0, 0, 3.0])
    # Unbiased: Var = 14/3.
    unbiased = 1 / math.sqrt(14 / 3 + 1e-8)
    assert masked_whiten(x, TWO_TURNS, unbiased=True).tolist()[0] == pytest.approx(
        [-2 * unbiased, -unbiased, 0, 0, 0, 3 * unbiased]
    )


def test_a_row_without_holes_does_not_depend_on_a_row_with_holes() -> None:
    # Bit for bit: a hole-free row is scanned in place, whether or not another row of the batch has holes.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 600, generator=gen, dtype=F64)
    no_holes = torch.ones(2, 600)
    no_holes[0, 500:] = 0  # right padding
    with_holes = no_holes.clone()
    with_holes[1, 100:120] = 0  # a hole in the other row
    for discount in (0.5, 0.99):
        assert torch.equal(discounted_cumsum(x, with_holes, discount)[0], discounted_cumsum(x, no_holes, discount)[0])
