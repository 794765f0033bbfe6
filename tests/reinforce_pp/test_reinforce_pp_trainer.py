import math

import pytest
import torch
import trl
from helpers import cpu_kwargs, logged

from trl_basics import ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
from trl_basics.functional import discounted_returns, kl_k1, masked_whiten, outcome_token_rewards


def make(config, tiny_model_dir, task, dataset):
    return ReinforcePlusPlusTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)


def test_defaults_are_the_papers(tmp_path):
    config = ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path))
    assert (config.kl_coef, config.kl_estimator, config.kl_placement) == (0.01, "k1", "token_reward")
    assert config.whiten_advantages and config.gamma == 1.0 and config.beta == 0.0
    assert config.scale_rewards == "none"


def test_plain_grpo_config_takes_our_defaults_but_keeps_user_values(tmp_path, tiny_model_dir, task, dataset):
    config = trl.GRPOConfig(**cpu_kwargs(tmp_path, max_steps=1), loss_type="bnpo", epsilon=0.1)
    trainer = make(config, tiny_model_dir, task, dataset)
    assert isinstance(trainer.args, ReinforcePlusPlusConfig)
    assert trainer.args.loss_type == "bnpo" and trainer.args.epsilon == 0.1  # the user's
    assert trainer.args.scale_rewards == "none" and trainer.args.kl_coef == 0.01  # ours where GRPO's were defaults
    assert trainer.ref_model is not None and trainer.beta == 0.0


def test_advantages_follow_the_paper_on_a_real_rollout(tmp_path, tiny_model_dir, task, dataset):
    """Recompute REINFORCE++'s advantages by hand from the rollout the trainer saw: r_t = 1[t=EOS]·r - β·k1_t,
    rewards-to-go with γ = 1, whitened over all active tokens."""
    trainer = make(ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path), kl_coef=0.1), tiny_model_dir, task, dataset)
    seen = {}
    original_build = trainer.build_rollout

    def spy(out, recorded):
        rollout = original_build(out, recorded)
        seen["rollout"] = rollout
        return rollout

    trainer.build_rollout = spy
    trainer.model.train()
    # Perturb the policy so that it differs from the reference and the KL term is not zero.
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(8)])
    rollout = seen["rollout"]
    mask = rollout.completion_mask.float()
    kl = kl_k1(rollout.logprobs, rollout.ref_logprobs) * mask
    assert kl.abs().sum() > 0
    token_rewards = outcome_token_rewards(rollout.rewards, mask) - 0.1 * kl
    expected = masked_whiten(discounted_returns(token_rewards, mask), mask)
    torch.testing.assert_close(batch["advantages"], expected.float(), rtol=1e-5, atol=1e-5)
    active = batch["advantages"][mask.bool()]
    assert active.mean().abs() < 1e-5 and (active.var(unbiased=False) - 1).abs() < 1e-3


def test_on_policy_run_computes_sampling_logprobs_once(tmp_path, tiny_model_dir, task, dataset):
    trainer = make(ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset)
    calls = []
    original = trainer.sampling_logprobs
    trainer.sampling_logprobs = lambda out: calls.append(1) or original(out)
    trainer.train()
    assert len(calls) == 2  # one extra no-grad pass per generation round, as GRPO skips it on-policy


def test_off_policy_reuses_grpo_old_logprobs(tmp_path, tiny_model_dir, task, dataset):
    config = ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path, max_steps=2), num_iterations=2)
    trainer = make(config, tiny_model_dir, task, dataset)
    trainer.sampling_logprobs = lambda out: pytest.fail("GRPO already computed old log-probs")
    trainer.train()
    assert len(logged(trainer, "advantages/mean")) == 1  # one generation round, reused for two iterations
    assert len(logged(trainer, "loss")) == 2


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_types_keep_working(loss_type, tmp_path, tiny_model_dir, task, dataset):
    trainer = make(ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path), loss_type=loss_type), tiny_model_dir, task, dataset)
    trainer.train()
    assert all(math.isfinite(v) for v in logged(trainer, "loss"))
    assert "kl" not in trainer.state.log_history[0]  # GRPO's own KL term stays off


def test_baseline_group_with_k2_loss(tmp_path, tiny_model_dir, task, dataset):
    config = ReinforcePlusPlusConfig(
        **cpu_kwargs(tmp_path), baseline="group", kl_placement="loss", kl_estimator="k2", kl_coef=0.01
    )
    trainer = make(config, tiny_model_dir, task, dataset)
    assert trainer.trick_pipeline.names == ["kl_shaping", "group_mean", "advantage_whiten"]
    trainer.train()
    assert len(logged(trainer, "tricks/kl_shaping/loss")) == 2


def test_single_sample_per_prompt(tmp_path, tiny_model_dir, task, dataset):
    trainer = make(ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path, num_generations=1)), tiny_model_dir, task, dataset)
    assert trainer.num_generations == 1
    trainer.train()
    assert len(logged(trainer, "advantages/std")) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale_rewards": "group"}, "scale_rewards='group' divides each advantage by its group's reward std"),
        ({"scale_rewards": True}, "the GRPO normalization that REINFORCE\\+\\+ replaces"),
        ({"beta": 0.04, "kl_coef": 0.2}, "both set a KL coefficient"),
        ({"baseline": "grouped"}, "baseline='grouped' is not a valid choice"),
        ({"baseline": "group", "num_generations": 1}, "needs num_generations >= 2"),
        ({"advantage_estimator": "rloo", "num_generations": 1}, "needs a group of samples per prompt"),
        ({"baseline": "group", "advantage_estimator": "rloo"}, "Set baseline='none' to use 'rloo'"),
        ({"multi_objective_aggregation": "normalize_then_sum", "num_generations": 1}, "z-scores each reward"),
    ],
)
def test_bad_settings_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path, **kwargs))
