"""Stop after step k, resume: parameters and trick state after N steps equal an uninterrupted run's (CPU, fixed seed)."""

import json

import pytest
import torch
from helpers import cpu_kwargs

import trl_basics as tb

CASES = {
    # running reward moments + adaptive KL coefficient (token KL) + whitening
    "rloo": (
        tb.RLOOTrainer,
        tb.RLOOConfig,
        {"beta": 0.0, "kl_coef": 0.05, "kl_target": 0.01, "reward_norm": "running", "whiten_advantages": True},
    ),
    # running scaling + group baseline + k2 KL in the loss
    "reinforce_pp_baseline": (
        tb.ReinforcePlusPlusTrainer,
        tb.ReinforcePlusPlusConfig,
        {"baseline": "group", "reward_scale": True, "kl_placement": "loss", "kl_estimator": "k2", "kl_target": 0.01},
    ),
    "reinforce_ma": (tb.ReinforceWithBaselineTrainer, tb.ReinforceWithBaselineConfig, {"baseline_decay": 0.9}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_resume_continues_exactly(name, tmp_path, tiny_model_dir, task, dataset):
    trainer_cls, config_cls, flags = CASES[name]

    def make(output_dir):
        kwargs = cpu_kwargs(output_dir, max_steps=4, save_strategy="steps", save_steps=2)
        return trainer_cls(
            model=tiny_model_dir, reward_funcs=task.reward_func, args=config_cls(**kwargs, **flags),
            train_dataset=dataset,
        )  # fmt: skip

    uninterrupted = make(tmp_path / "a")
    uninterrupted.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    saved = json.loads((checkpoint / "trl_basics_tricks.json").read_text())
    assert saved["state"], "the checkpoint holds the trick state"

    resumed = make(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 4
    assert resumed.trick_pipeline.state_dict() == uninterrupted.trick_pipeline.state_dict()
    for (key, a), (_, b) in zip(resumed.model.named_parameters(), uninterrupted.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=key)
