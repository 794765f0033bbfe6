"""The estimators through the pipeline on a two-turn rollout with a tool output inside the completion.

Mask [1, 1, 0, 0, 1, 1]: two policy tokens, a two-token tool output (a hole), two policy tokens. The hole is
transparent (docs/reinforce_pp.md, "Holes in the mask"); the numbers are those of tests/functional/test_holes.py.
"""

import math

import torch
from helpers import run_pipeline

from trl_basics import Rollout, TrickArguments, TrickContext, TrickPipeline
from trl_basics.tricks.estimators import token_level_estimator

F64 = torch.float64
MASK = torch.tensor([[1, 1, 0, 0, 1, 1]], dtype=F64)
# log π - log π_ref = k1 per token: [0.1, 0.2, -, -, 0.3, 0.4]; the holes hold garbage (40) that must not count.
LOGP = torch.tensor([[0.1, 0.2, 40.0, 40.0, 0.3, 0.4]], dtype=F64)
REF = torch.zeros(1, 6, dtype=F64)


def two_turn_rollout(rewards, rows=1, **extra):
    return Rollout(
        rewards=torch.tensor(rewards, dtype=F64), num_generations=len(rewards), process_slice=slice(0, rows),
        completion_mask=MASK.expand(rows, 6), logprobs=LOGP.expand(rows, 6), ref_logprobs=REF.expand(rows, 6),
        **extra,
    )  # fmt: skip


def test_reinforce_pp_with_token_kl_and_discount(registry):
    # r = 1 at t = 5, -β·k1 = -0.5·[0.1, 0.2, -, -, 0.3, 0.4] → [-0.05, -0.1, 0, 0, -0.15, 0.8]; γ = 0.5:
    # G_5 = 0.8, G_4 = -0.15 + 0.4 = 0.25, G_1 = -0.1 + 0.125 = 0.025, G_0 = -0.05 + 0.0125 = -0.0375.
    args = TrickArguments(advantage_estimator="reinforce", kl_coef=0.5, kl_estimator="k1", gamma=0.5)
    _, out = run_pipeline(args, two_turn_rollout([1.0]), registry)
    torch.testing.assert_close(out.advantages, torch.tensor([[-0.0375, 0.025, 0, 0, 0.25, 0.8]], dtype=F64))
    # γ = 1: G = 1 - 0.5·Σ_{i>=t} k1_i = [0.5, 0.55, 0, 0, 0.65, 0.8].
    args = TrickArguments(advantage_estimator="reinforce", kl_coef=0.5, kl_estimator="k1")
    _, out = run_pipeline(args, two_turn_rollout([1.0]), registry)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5, 0.55, 0, 0, 0.65, 0.8]], dtype=F64))


def test_rloo_in_token_mode(registry):
    # k = 3, R = [1, 0, 0.5] → A = [0.75, -0.75, 0]; row 0 with token KL, γ = 1:
    # G = [0.75 - 0.5·1.0, 0.75 - 0.5·0.9, 0, 0, 0.75 - 0.5·0.7, 0.75 - 0.5·0.4] = [0.25, 0.3, 0, 0, 0.4, 0.55].
    args = TrickArguments(kl_coef=0.5, kl_estimator="k1", kl_placement="token_reward")
    _, out = run_pipeline(args, two_turn_rollout([1.0, 0.0, 0.5]), registry, default_estimator="rloo")
    torch.testing.assert_close(out.advantages, torch.tensor([[0.25, 0.3, 0, 0, 0.4, 0.55]], dtype=F64))


def test_reinforce_pp_baseline_whitened_over_policy_tokens(registry):
    # k = 2, both rows two-turn, R = [1, 0] → A' = [0.5, -0.5], spread over the 4 policy tokens of each row (γ = 1,
    # no KL). Whitening counts 8 tokens: mean 0, Var 0.25 → ±0.5/√(0.25 + 1e-8) ≈ ±1 (holes would pull the std down).
    args = TrickArguments(advantage_estimator="group_mean", whiten_advantages=True)
    pipeline = TrickPipeline.from_args(args, registry)
    pipeline.estimator = token_level_estimator(pipeline.estimator)  # as REINFORCE++-baseline's trainer does
    out = pipeline.process(two_turn_rollout([1.0, 0.0], rows=2), TrickContext())
    one = 0.5 / math.sqrt(0.25 + 1e-8)
    expected = torch.tensor([[one, one, 0, 0, one, one], [-one, -one, 0, 0, -one, -one]], dtype=F64)
    torch.testing.assert_close(out.advantages, expected)


def test_gae_and_critic_targets(registry):
    # γ = 0.9, λ = 0.5, no KL; V = [0.5, 0.4, -, -, 0.6, 0.8] (7.0 at the holes is garbage), R = 1 at t = 5:
    # δ = [-0.14, 0.14, -, -, 0.12, 0.2]; A = [-0.034475, 0.2345, 0, 0, 0.21, 0.2]; targets A + V.
    args = TrickArguments(advantage_estimator="gae", gamma=0.9, gae_lambda=0.5)
    values = torch.tensor([[0.5, 0.4, 7.0, 7.0, 0.6, 0.8]], dtype=F64)
    _, out = run_pipeline(args, two_turn_rollout([1.0], values=values), registry)
    torch.testing.assert_close(out.advantages, torch.tensor([[-0.034475, 0.2345, 0, 0, 0.21, 0.2]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[0.465525, 0.6345, 0, 0, 0.81, 1.0]], dtype=F64))
