"""The loss-stage tricks (stage 5): KL in the loss and the entropy bonus, exact values and gradients."""

import pytest
import torch

from trl_basics import LossInputs, TrickArguments, TrickContext, TrickPipeline


def _kl_and_entropy(registry, token_normalizer=None):
    """KL (k2) in the loss with β 0.5 and the entropy bonus 0.1, on two active tokens and a masked one."""
    args = TrickArguments(kl_coef=0.5, kl_estimator="k2", kl_placement="loss", entropy_bonus_coef=0.1)
    logprobs = torch.tensor([[0.2, -0.4, 5.0]], requires_grad=True)
    inputs = LossInputs(
        logprobs=logprobs,
        completion_mask=torch.tensor([[1.0, 1.0, 0.0]]),
        ref_logprobs=torch.zeros(1, 3),
        entropies=torch.tensor([[2.0, 1.0, 100.0]]),
        token_normalizer=token_normalizer,
    )
    return TrickPipeline.from_args(args, registry).loss(inputs, TrickContext()), logprobs


def test_loss_stage_sums_kl_and_entropy_terms(registry):
    loss, logprobs = _kl_and_entropy(registry)
    # k2 = ½ℓ²: mean(0.02, 0.08) = 0.05, times β 0.5; entropy: -0.1 · mean(2, 1).
    assert loss.item() == pytest.approx(0.5 * 0.05 - 0.1 * 1.5)
    loss.backward()
    # d/dℓ of 0.5 · mean(½ℓ²) = 0.5 · ℓ / 2 on the two active tokens, 0 on the masked one.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.05, -0.1, 0.0]]))


def test_entropy_target_form(registry):
    pipeline = TrickPipeline.from_args(TrickArguments(entropy_bonus_coef=0.01, entropy_bonus_target=3.0), registry)
    inputs = LossInputs(logprobs=torch.zeros(1, 2), completion_mask=torch.ones(1, 2), entropies=torch.ones(1, 2))
    assert pipeline.loss(inputs, TrickContext()).item() == pytest.approx(0.01 * 2.0)


def test_loss_terms_over_an_accumulation_window(registry):
    """With the window's token count as normaliser, the terms are this micro-batch's share of the window's token
    mean: the KL and the linear entropy bonus divide their sums by it; the target form weighs the micro-batch's own
    |H̄ - δ| by its share of the window's tokens."""
    loss, logprobs = _kl_and_entropy(registry, token_normalizer=torch.tensor(8.0))
    # k2 sum 0.02 + 0.08 = 0.1 over 8 tokens, times β 0.5; entropy: -0.1 · (2 + 1) / 8.
    assert loss.item() == pytest.approx(0.5 * 0.1 / 8 - 0.1 * 3.0 / 8)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.5 * 0.2 / 8, 0.5 * -0.4 / 8, 0.0]]))

    target = TrickPipeline.from_args(TrickArguments(entropy_bonus_coef=0.01, entropy_bonus_target=3.0), registry)
    share = LossInputs(
        logprobs=torch.zeros(1, 2),
        completion_mask=torch.ones(1, 2),
        entropies=torch.ones(1, 2),
        token_normalizer=torch.tensor(8.0),
    )
    # |1 - 3| = 2, weighted by 2 of the window's 8 tokens.
    assert target.loss(share, TrickContext()).item() == pytest.approx(0.01 * 2.0 * 2 / 8)
