import json
import math

import pytest
import torch
import trl
from helpers import cpu_kwargs, logged

import trl_basics.kit.model
from trl_basics import ReinforceWithBaselineConfig, ReinforceWithBaselineTrainer, RLOOConfig, RLOOTrainer


def train(trainer_cls, config, tiny_model_dir, task, dataset, **kwargs):
    trainer = trainer_cls(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset, **kwargs)
    trainer.train()
    return trainer


def test_no_flags_is_exactly_trl_rloo(tmp_path, tiny_model_dir, task, dataset):
    """With no trick flag set, parameters after 3 steps are bit-identical to trl.RLOOTrainer's (same seed, data)."""
    kwargs = cpu_kwargs(tmp_path, max_steps=3)
    ours = train(RLOOTrainer, RLOOConfig(**kwargs), tiny_model_dir, task, dataset)
    theirs = train(trl.RLOOTrainer, trl.RLOOConfig(**kwargs), tiny_model_dir, task, dataset)
    assert not ours.tricks_active
    changed = 0
    initial = trl_basics.kit.model.load_tiny_model(tiny_model_dir)[0].state_dict()
    for (name, ours_param), (_, their_param) in zip(ours.model.named_parameters(), theirs.model.named_parameters()):
        assert torch.equal(ours_param, their_param), name
        changed += not torch.equal(ours_param, initial[name])
    assert changed > 0  # training moved the weights, so the comparison means something


def test_plain_trl_config_is_accepted_and_keeps_user_values(tmp_path, tiny_model_dir, task, dataset):
    config = trl.RLOOConfig(**cpu_kwargs(tmp_path, max_steps=1, beta=0.1))
    trainer = RLOOTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    assert isinstance(trainer.args, RLOOConfig)
    assert trainer.args.beta == 0.1 and trainer.args.per_device_train_batch_size == 8
    assert trainer.args.reward_norm == "none"  # our default for a field the parent lacks


def test_sequence_kl_pipeline_reproduces_trl_advantages(tmp_path, tiny_model_dir, task, dataset):
    """A trick that changes nothing numerically (clip far outside the reward range) runs the whole pipeline path:
    TRL's beta becomes k1 sequence KL, then leave-one-out. The resulting training matches TRL to float tolerance."""
    kwargs = cpu_kwargs(tmp_path, max_steps=2, beta=0.05)
    ours = train(RLOOTrainer, RLOOConfig(**kwargs, reward_clip=1e6), tiny_model_dir, task, dataset)
    theirs = train(trl.RLOOTrainer, trl.RLOOConfig(**kwargs), tiny_model_dir, task, dataset)
    assert ours.tricks_active
    assert ours.trick_pipeline.names == ["reward_clip", "kl_shaping", "rloo"]
    for (name, a), (_, b) in zip(ours.model.named_parameters(), theirs.model.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


FLAG_CASES = {
    "reward_norm_batch": ({"reward_norm": "batch"}, "reward_transformed/mean"),
    "reward_norm_running": ({"reward_norm": "running"}, "tricks/reward_norm/running_std"),
    "reward_scale": ({"reward_scale": True}, "tricks/reward_scale/running_std"),
    "reward_clip": ({"reward_clip": 0.3}, "tricks/reward_clip/clip_fraction"),
    "kl_token": ({"beta": 0.0, "kl_coef": 0.05, "kl_placement": "token_reward"}, "tricks/kl_shaping/k1_sequence_mean"),
    "kl_sequence_k3": (
        {"beta": 0.0, "kl_coef": 0.05, "kl_estimator": "k3", "kl_placement": "sequence_reward"},
        "tricks/kl_shaping/k3_sequence_mean",
    ),
    "kl_loss_k2": (
        {"beta": 0.0, "kl_coef": 0.05, "kl_estimator": "k2", "kl_placement": "loss"},
        "tricks/kl_shaping/loss",
    ),
    "kl_adaptive": ({"beta": 0.0, "kl_coef": 0.05, "kl_target": 0.01}, "tricks/kl_shaping/coef"),
    "whiten": ({"whiten_advantages": True}, "advantages/std"),
    "whiten_center": ({"whiten_advantages": True, "whiten_advantages_center_only": True}, "advantages/mean"),
    "advantage_clip": ({"advantage_clip": 0.1}, "tricks/advantage_clip/clip_fraction"),
    "entropy_bonus": ({"entropy_bonus_coef": 0.01}, "tricks/entropy_bonus/mean_entropy"),
    "length_penalty_plugin": (
        {"tricks": ["length_penalty"], "trick_kwargs": {"length_penalty": {"coef": 0.01}}},
        "tricks/length_penalty/mean_penalty",
    ),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_every_trick_flag_trains(case, tmp_path, tiny_model_dir, task, dataset):
    flags, metric = FLAG_CASES[case]
    trainer = train(RLOOTrainer, RLOOConfig(**cpu_kwargs(tmp_path), **flags), tiny_model_dir, task, dataset)
    values = logged(trainer, metric)
    assert len(values) == 2 and all(math.isfinite(v) for v in values), values
    for name in ("reward_raw/mean", "advantages/mean", "perplexity"):
        assert logged(trainer, name), name
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_adaptive_kl_coefficient_moves(tmp_path, tiny_model_dir, task, dataset):
    config = RLOOConfig(**cpu_kwargs(tmp_path, max_steps=3), beta=0.0, kl_coef=0.05, kl_target=1e-4, kl_horizon=10)
    coefs = logged(train(RLOOTrainer, config, tiny_model_dir, task, dataset), "tricks/kl_shaping/coef")
    # Round 1: the policy is the reference, KL 0 < target, so β ← 0.05·(1 - 0.2·8/10) = 0.042. Later rounds have
    # KL far above the target: β ← β·(1 + 0.2·8/10).
    assert coefs == pytest.approx([0.05, 0.042, 0.042 * 1.16])


def test_token_level_kl_switches_to_the_token_loss(tmp_path, tiny_model_dir, task, dataset):
    config = RLOOConfig(**cpu_kwargs(tmp_path), beta=0.0, kl_coef=0.05, kl_placement="token_reward")
    trainer = RLOOTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    assert trainer.ref_model is not None  # loaded although beta == 0, because KL shaping needs it
    trainer.model.train()  # the pipeline runs on training rounds only
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(8)])
    assert batch["advantages"].shape == batch["completion_ids"].shape
    assert batch["old_per_token_logps"].shape == batch["completion_ids"].shape
    assert trainer.beta == 0.0


def test_paper_faithful_mode(tmp_path):
    config = RLOOConfig(**cpu_kwargs(tmp_path), paper_faithful=True)
    assert config.steps_per_generation == 1 and config.num_iterations == 1
    with pytest.raises(ValueError, match="no reward clipping or advantage normalization"):
        RLOOConfig(**cpu_kwargs(tmp_path), paper_faithful=True, normalize_advantages=True)
    with pytest.raises(ValueError, match="one on-policy step"):
        RLOOConfig(**cpu_kwargs(tmp_path), paper_faithful=True, num_iterations=2)


def test_kl_coef_with_trl_beta_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Set beta=0.0"):
        RLOOConfig(**cpu_kwargs(tmp_path), kl_coef=0.05)  # TRL's default beta is 0.05


def test_num_generations_one_is_refused_for_rloo(tmp_path):
    with pytest.raises(ValueError, match="at least 2 generations"):
        RLOOConfig(**cpu_kwargs(tmp_path, num_generations=1))


def test_moving_average_baseline_survives_checkpoint_and_resume(tmp_path, tiny_model_dir, task, dataset):
    kwargs = cpu_kwargs(tmp_path / "run", num_generations=1, max_steps=4, save_strategy="steps", save_steps=2)
    config = ReinforceWithBaselineConfig(**kwargs)
    uninterrupted = train(ReinforceWithBaselineTrainer, config, tiny_model_dir, task, dataset)
    checkpoint = tmp_path / "run" / "checkpoint-2"
    saved = json.loads((checkpoint / "trl_basics_tricks.json").read_text())
    assert saved["state"]["moving_average"]["baseline"]["count"] == 2 * 8  # two steps of 8 rewards

    resumed_config = ReinforceWithBaselineConfig(**{**kwargs, "output_dir": str(tmp_path / "resumed")})
    resumed = ReinforceWithBaselineTrainer(
        model=tiny_model_dir, reward_funcs=task.reward_func, args=resumed_config, train_dataset=dataset
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.trick_pipeline.state_dict() == uninterrupted.trick_pipeline.state_dict()
    for (name, a), (_, b) in zip(resumed.model.named_parameters(), uninterrupted.model.named_parameters()):
        torch.testing.assert_close(a, b, msg=name)
