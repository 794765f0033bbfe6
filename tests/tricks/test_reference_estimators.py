"""The `raft` and `vanilla` estimators in the pipeline, and RAFT's loss gradient against SFT's."""

import torch
from helpers import run_pipeline

from trl_basics import Rollout, TrickArguments
from trl_basics.functional import clipped_policy_loss, raft_advantages


def test_raft_estimator_in_the_pipeline_zeroes_unscorable_samples(registry):
    rewards = torch.tensor([0.1, 0.7, 0.7, float("nan"), float("nan"), float("nan")])
    _, out = run_pipeline(TrickArguments(advantage_estimator="raft"), Rollout(rewards=rewards, num_generations=3), registry)
    assert out.advantages.tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_vanilla_estimator_is_the_sequence_reward_after_kl_shaping(registry):
    # Sequence-level KL in the reward: R = r - β Σ_t ℓ_t = [1 - 0.5·0.4, 0 - 0.5·(-0.2)] = [0.8, 0.1].
    args = TrickArguments(advantage_estimator="vanilla", kl_coef=0.5, kl_placement="sequence_reward")
    rollout = Rollout(
        rewards=torch.tensor([1.0, 0.0], dtype=torch.float64),
        num_generations=1,
        completion_mask=torch.ones(2, 2),
        logprobs=torch.tensor([[0.1, 0.3], [-0.1, -0.1]], dtype=torch.float64),
        ref_logprobs=torch.zeros(2, 2, dtype=torch.float64),
    )
    _, out = run_pipeline(args, rollout, registry)
    torch.testing.assert_close(out.advantages, torch.tensor([0.8, 0.1], dtype=torch.float64))


def test_vanilla_estimator_without_shaping_is_the_raw_reward(registry):
    _, out = run_pipeline(
        TrickArguments(advantage_estimator="vanilla"), Rollout(rewards=torch.tensor([2.0, -1.0]), num_generations=2),
        registry,
    )  # fmt: skip
    assert out.advantages.tolist() == [2.0, -1.0]


def test_raft_loss_gradient_is_the_sft_gradient_on_the_best_completions():
    """On-policy, RAFT's clipped policy loss has the gradient of SFT (mean NLL) on the best-of-k completions, up to
    the ratio of the two normalisers (all active tokens vs the chosen completions' tokens)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(11, 8), torch.nn.Linear(8, 11))
    tokens = torch.randint(0, 11, (6, 4))  # 2 prompts × 3 completions, 4 tokens each (one token of context)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]] * 2, dtype=torch.float32)
    rewards = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.5, 0.2])  # best: sample 1; tie in group 2 → sample 3 (the first)

    def token_logprobs():
        logits = model(tokens[:, :-1])
        return torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)

    targets_mask = mask[:, 1:]
    advantages = raft_advantages(rewards, num_generations=3)
    assert advantages.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    logprobs = token_logprobs()
    loss, _ = clipped_policy_loss(logprobs, logprobs.detach(), advantages, targets_mask)
    raft_loss = loss.sum() / targets_mask.sum()  # the token mean over the whole batch
    raft_grads = torch.autograd.grad(raft_loss, list(model.parameters()))

    chosen = advantages.bool()
    sft_loss = -(token_logprobs()[chosen] * targets_mask[chosen]).sum() / targets_mask[chosen].sum()
    sft_grads = torch.autograd.grad(sft_loss, list(model.parameters()))
    scale = targets_mask.sum() / targets_mask[chosen].sum()  # 12 / 5
    assert (targets_mask.sum().item(), targets_mask[chosen].sum().item()) == (12, 5)
    for raft_grad, sft_grad in zip(raft_grads, sft_grads, strict=True):
        assert sft_grad.abs().sum() > 0
        torch.testing.assert_close(raft_grad * scale, sft_grad)


def test_reward_noise_is_seeded_by_seed_and_round_and_resumes(registry):
    from trl_basics import TrickContext, TrickPipeline

    args = TrickArguments(reward_noise_std=0.5)
    args.seed = 3
    pipeline = TrickPipeline.from_args(args, registry, default_estimator="vanilla")
    rewards = torch.zeros(4, dtype=torch.float64)
    first = pipeline.process(Rollout(rewards=rewards, num_generations=2), TrickContext()).advantages
    expected = torch.randn(4, generator=torch.Generator().manual_seed(3 * 1_000_003), dtype=torch.float64) * 0.5
    torch.testing.assert_close(first, expected)
    state = pipeline.state_dict()
    assert state["reward_noise"] == {"rounds": 1}
    second = pipeline.process(Rollout(rewards=rewards, num_generations=2), TrickContext()).advantages
    resumed = TrickPipeline.from_args(args, registry, default_estimator="vanilla")
    resumed.load_state_dict(state)
    again = resumed.process(Rollout(rewards=rewards, num_generations=2), TrickContext()).advantages
    torch.testing.assert_close(again, second)
    assert not torch.equal(first, second)
