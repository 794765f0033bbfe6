"""The critic's update does not depend on how the accumulation window splits into micro-batches: gradient
accumulation over 1, 2 or 4 micro-batches gives the same critic gradient as one batch of the whole window."""

import pytest
from helpers import logged
from helpers import ppo_max_cpu_kwargs as cpu_kwargs

from trl_basics import PPOMaxConfig, PPOMaxTrainer

WINDOW = 8  # completions per optimizer step


def first_critic_step(tmp_path, model_dir, task, dataset, accumulation):
    config = PPOMaxConfig(
        **cpu_kwargs(
            tmp_path / f"ga{accumulation}",
            per_device_train_batch_size=WINDOW // accumulation,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            max_completion_length=6,
        )
    )
    trainer = PPOMaxTrainer(model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    trainer.train()
    return logged(trainer, "value/grad_norm")[0], logged(trainer, "value/loss")[0]


@pytest.mark.slow
def test_the_critic_update_is_the_same_for_1_2_and_4_micro_batches(
    tmp_path, tiny_model_dir, task, dataset, monkeypatch
):
    norms = {ga: first_critic_step(tmp_path, tiny_model_dir, task, dataset, ga) for ga in (1, 2, 4)}
    reference = norms[1]
    for ga in (2, 4):
        assert norms[ga][0] == pytest.approx(reference[0], rel=1e-5), (ga, norms)

    # Each micro-batch as its own token mean (the rule without the window's count) differs: the test can tell.
    monkeypatch.setattr(PPOMaxTrainer, "window_token_count", lambda self, inputs: None)
    per_micro_batch = first_critic_step(tmp_path / "off", tiny_model_dir, task, dataset, 4)[0]
    assert per_micro_batch != pytest.approx(reference[0], rel=1e-3)
