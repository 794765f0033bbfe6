"""Gradient accumulation does not change an update: 1, 2 or 4 accumulated micro-batches give the same gradient as one
batch of the whole window, for the critic (normalised by the window's global token count) and for every policy
``loss_type`` whose normaliser TRL takes over the window. ``bnpo`` (the token mean of each micro-batch) is, by TRL's
design, per micro-batch."""

import pytest
from helpers import logged
from helpers import ppo_max_cpu_kwargs as cpu_kwargs

from trl_basics import PPOMaxConfig, PPOMaxTrainer

WINDOW = 8  # completions per optimizer step
# Token-weighted over the window (TRL divides by the generation batch's global token count) or sequence-weighted
# with a fixed number of rows per micro-batch: the split into micro-batches does not matter.
WINDOW_LOSSES = ("dapo", "cispo", "grpo", "dr_grpo", "sapo", "luspo")


def first_step(tmp_path, model_dir, task, dataset, accumulation, **overrides):
    """The critic's and the policy's gradient norms (before clipping) at the first optimizer step."""
    config = PPOMaxConfig(
        **cpu_kwargs(
            tmp_path / f"ga{accumulation}",
            per_device_train_batch_size=WINDOW // accumulation,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            max_completion_length=6,
            **overrides,
        )
    )
    trainer = PPOMaxTrainer(model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    trainer.train()
    return logged(trainer, "value/grad_norm")[0], logged(trainer, "grad_norm")[0]


@pytest.mark.slow
def test_the_critic_update_is_the_same_for_1_2_and_4_micro_batches(
    tmp_path, tiny_model_dir, task, dataset, monkeypatch
):
    norms = {ga: first_step(tmp_path, tiny_model_dir, task, dataset, ga)[0] for ga in (1, 2, 4)}
    for ga in (2, 4):
        assert norms[ga] == pytest.approx(norms[1], rel=1e-5), norms

    # Each micro-batch as its own token mean (the rule without the window's count) differs: the test can tell.
    monkeypatch.setattr(PPOMaxTrainer, "window_token_count", lambda self, inputs: None)
    per_micro_batch = first_step(tmp_path / "off", tiny_model_dir, task, dataset, 4)[0]
    assert per_micro_batch != pytest.approx(norms[1], rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", [*WINDOW_LOSSES, "bnpo"])
def test_the_policy_update_for_1_2_and_4_micro_batches(loss_type, tmp_path, tiny_model_dir, task, dataset):
    norms = {ga: first_step(tmp_path, tiny_model_dir, task, dataset, ga, loss_type=loss_type)[1] for ga in (1, 2, 4)}
    if loss_type in WINDOW_LOSSES:
        for ga in (2, 4):
            assert norms[ga] == pytest.approx(norms[1], rel=1e-4), norms
    else:  # bnpo: each micro-batch's own token mean, so each micro-batch weighs the same, not each token
        assert norms[4] != pytest.approx(norms[1], rel=1e-3), norms
