"""The RLOO family on the GRPO-based trainer base: equivalence with trl.RLOOTrainer, every GRPO loss-side option,
dual clip on trl_basics' RLOO losses, and GRPO's advantage-side options translated on REINFORCE++."""

from __future__ import annotations

import logging

import pytest
import torch
import trl
from helpers import cpu_kwargs, logged

import trl_basics.kit.model
from trl_basics import (
    ReinforcePlusPlusConfig,
    ReinforcePlusPlusTrainer,
    ReinforceWithBaselineConfig,
    ReinforceWithBaselineTrainer,
    RLOOConfig,
    RLOOTrainer,
)
from trl_basics.seams import FORWARD_KEYS

# Plain SGD: the update is lr·gradient, so a gradient that differs by any factor shows (Adam's first step would
# normalise a constant factor away).
SGD = {"optim": "sgd", "learning_rate": 0.5, "max_steps": 1}
# RLOO on the GRPO base, set to reproduce TRL's RLOO: leave-one-out, no whitening, KL as TRL RLOO's beta would be
# (k1 summed over the sequence, in the reward), and the "luspo" aggregation Σ_t / number of completions.
RLOO_AS_TRL = {"advantage_estimator": "rloo", "whiten_advantages": False, "loss_type": "luspo"}


def spy_rollouts(trainer):
    seen = []
    original = trainer._generate_and_score_completions

    def spy(inputs):
        out = original(inputs)
        seen.append(out)
        return out

    trainer._generate_and_score_completions = spy
    return seen


def train(trainer_cls, config, tiny_model_dir, task, dataset, reward_funcs=None):
    trainer = trainer_cls(
        model=tiny_model_dir, reward_funcs=reward_funcs or task.reward_func, args=config, train_dataset=dataset
    )
    rollouts = spy_rollouts(trainer)
    trainer.train()
    return trainer, rollouts


def sequence_advantages(out):
    """REINFORCE++'s trainer gives (B, T) advantages; the RLOO family's are one value per completion, tiled over its
    tokens. Check the tiling and return (the value per completion, which rows have tokens)."""
    advantages, mask = out["advantages"], out["completion_mask"].bool()
    rows = mask.any(dim=1)
    if advantages.dim() == 1:
        return advantages, rows
    per_row = (advantages * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
    torch.testing.assert_close(advantages[mask], per_row.unsqueeze(1).expand_as(advantages)[mask])
    assert advantages[~mask].abs().sum() == 0
    return per_row, rows


def assert_same_advantages(mine, reference):
    ours, rows = sequence_advantages(mine)
    theirs, _ = sequence_advantages(reference)
    assert rows.any()
    torch.testing.assert_close(ours[rows], theirs[rows], rtol=1e-5, atol=1e-6)


def max_param_difference(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("trl_kwargs", "ours_kwargs"),
    [
        ({}, {"kl_coef": None}),
        ({"beta": 0.05}, {"kl_coef": 0.05, "kl_estimator": "k1", "kl_placement": "sequence_reward"}),
    ],
    ids=["no_kl", "beta_kl"],
)
def test_rloo_on_the_grpo_base_is_trl_rloo(tmp_path, tiny_model_dir, task, dataset, trl_kwargs, ours_kwargs):
    """Same seed and data: the same completions, RLOO advantages equal TRL's, and one on-policy SGD step moves the
    weights the same to float tolerance."""
    kwargs = cpu_kwargs(tmp_path, **SGD)
    theirs, their_rollouts = train(trl.RLOOTrainer, trl.RLOOConfig(**kwargs, **trl_kwargs), tiny_model_dir, task,
                                   dataset)  # fmt: skip
    config = ReinforcePlusPlusConfig(**kwargs, **RLOO_AS_TRL, **ours_kwargs)
    ours, our_rollouts = train(ReinforcePlusPlusTrainer, config, tiny_model_dir, task, dataset)
    assert ours.trick_pipeline.estimator.name == "rloo"
    assert torch.equal(our_rollouts[0]["completion_ids"], their_rollouts[0]["completion_ids"])
    assert_same_advantages(our_rollouts[0], their_rollouts[0])
    assert their_rollouts[0]["advantages"].abs().sum() > 0
    initial = trl_basics.kit.model.load_tiny_model(tiny_model_dir)[0]
    moved = max((p - q).abs().max().item() for p, q in zip(theirs.model.parameters(), initial.parameters()))
    assert moved > 1e-3
    assert max_param_difference(ours, theirs) < 1e-6 * max(1.0, moved)


def test_another_loss_aggregation_gives_another_update(tmp_path, tiny_model_dir, task, dataset):
    """The comparison above can fail: GRPO's per-sequence token mean ('grpo') divides RLOO's gradient by the length."""
    kwargs = cpu_kwargs(tmp_path, **SGD)
    theirs, _ = train(trl.RLOOTrainer, trl.RLOOConfig(**kwargs), tiny_model_dir, task, dataset)
    config = ReinforcePlusPlusConfig(**kwargs, **{**RLOO_AS_TRL, "loss_type": "grpo"}, kl_coef=None)
    ours, _ = train(ReinforcePlusPlusTrainer, config, tiny_model_dir, task, dataset)
    assert max_param_difference(ours, theirs) > 1e-3


def test_moving_average_on_the_grpo_base_is_reinforce_with_baseline(tmp_path, tiny_model_dir, task, dataset):
    """Two SGD steps (the second uses the first batch's baseline): the same advantages and weights as
    ReinforceWithBaselineTrainer, which runs the same estimator on TRL's RLOO machinery."""
    kwargs = cpu_kwargs(tmp_path, **{**SGD, "max_steps": 2})
    theirs, their_rollouts = train(ReinforceWithBaselineTrainer, ReinforceWithBaselineConfig(**kwargs, beta=0.0),
                                   tiny_model_dir, task, dataset)  # fmt: skip
    config = ReinforcePlusPlusConfig(
        **kwargs, **{**RLOO_AS_TRL, "advantage_estimator": "moving_average"}, kl_coef=None
    )
    ours, our_rollouts = train(ReinforcePlusPlusTrainer, config, tiny_model_dir, task, dataset)
    assert ours.trick_pipeline.estimator.name == "moving_average"
    for mine, reference in zip(our_rollouts, their_rollouts, strict=True):
        assert_same_advantages(mine, reference)
    assert logged(ours, "tricks/moving_average/baseline") == pytest.approx(
        logged(theirs, "tricks/moving_average/baseline"), abs=1e-6
    )
    assert max_param_difference(ours, theirs) < 1e-5


# Every GRPO loss-side option, on top of the RLOO family's estimators.
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
GRPO_LOSS_OPTIONS = {
    **{f"loss_type={name}": {"loss_type": name} for name in LOSS_TYPES},
    "delta": {"delta": 1.5, "num_iterations": 2},
    "epsilon_high": {"epsilon_high": 0.28},
    "importance_sampling_level=sequence": {"importance_sampling_level": "sequence", "num_iterations": 2},
    "off_policy_mask_threshold": {"off_policy_mask_threshold": 0.01, "num_iterations": 2},
    "entropy_coef": {"entropy_coef": 0.01},
    "adaptive_entropy": {"use_adaptive_entropy": True, "entropy_coef": 0.01},
    "top_entropy_quantile": {"top_entropy_quantile": 0.5},
    "use_bias_correction_kl": {
        "kl_coef": 0.05,
        "kl_placement": "loss",
        "kl_estimator": "k3",
        "use_bias_correction_kl": True,
        "num_iterations": 2,
    },
    "k3_plus_in_loss": {"kl_coef": 0.05, "kl_placement": "loss", "kl_estimator": "k3_plus"},
}


# Every option with leave-one-out; the moving-average baseline (no group needed) with the options that look at the
# advantages' sign or at off-policy ratios, where a different estimator could matter.
MOVING_AVERAGE_OPTIONS = ("loss_type=vespo", "loss_type=cispo", "delta", "off_policy_mask_threshold",
                          "importance_sampling_level=sequence", "use_bias_correction_kl")  # fmt: skip
OPTION_CASES = [(option, "rloo") for option in GRPO_LOSS_OPTIONS] + [
    (option, "moving_average") for option in MOVING_AVERAGE_OPTIONS
]


@pytest.mark.parametrize(("option", "estimator"), OPTION_CASES)
def test_every_grpo_loss_option_trains_the_rloo_family(tmp_path, tiny_model_dir, task, dataset, option, estimator):
    options = {"kl_coef": None, "whiten_advantages": False, **GRPO_LOSS_OPTIONS[option]}
    kwargs = cpu_kwargs(tmp_path, max_steps=2, per_device_train_batch_size=4, num_generations=2)
    trainer = ReinforcePlusPlusTrainer(
        model=tiny_model_dir,
        reward_funcs=task.reward_func,
        args=ReinforcePlusPlusConfig(**kwargs, advantage_estimator=estimator, **options),
        train_dataset=dataset,
    )
    initial = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.trick_pipeline.estimator.name == estimator
    losses = logged(trainer, "loss")
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(p, q) for p, q in zip(trainer.model.parameters(), initial))
    for name, value in GRPO_LOSS_OPTIONS[option].items():
        assert getattr(trainer.args, name) == value
    if "kl_placement" in options:
        coefs = logged(trainer, "tricks/kl_shaping/coef")  # one per generation round
        assert coefs and set(coefs) == {0.05}


# --- dual clip on trl_basics' own RLOO losses -------------------------------------------------------------------


def _rloo_batch(trainer, dataset):
    trainer.model.train()
    return trainer._generate_and_score_completions([dataset[i] for i in range(8)])


def _loss_and_grad_norm(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    norm = sum(p.grad.abs().sum().item() for p in trainer.model.parameters() if p.grad is not None)
    return loss.item(), norm


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_rloo_dual_clip_caps_the_loss_and_stops_the_gradient(tmp_path, tiny_model_dir, task, dataset, level):
    """Ratios blown up to e^8 with negative advantages: with delta = 3 the loss is exactly 3·|A| per token (token
    level, summed over tokens and averaged over completions) or per completion (sequence level), and no gradient
    flows; without delta the loss is e^8·|A| and the gradient is not zero."""
    flags = {"beta": 0.0, "kl_coef": 0.05, "kl_placement": "token_reward"} if level == "token" else {}
    config = RLOOConfig(**cpu_kwargs(tmp_path, max_steps=1), delta=3.0, **flags)
    trainer = RLOOTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    inputs = _rloo_batch(trainer, dataset)
    mask = inputs["completion_mask"].float()
    advantages = -(inputs["advantages"].abs() + 0.5)  # all negative
    inputs["advantages"] = advantages
    if level == "token":
        assert advantages.dim() == 2
        inputs["old_per_token_logps"] = inputs["old_per_token_logps"] - 8.0
        expected = (3.0 * advantages.abs() * mask).sum(dim=1).mean().item()
        unclipped = (torch.exp(torch.tensor(8.0)) * advantages.abs() * mask).sum(dim=1).mean().item()
    else:
        assert advantages.dim() == 1 and "old_per_token_logps" not in inputs
        inputs["old_logps"] = inputs["old_logps"] - 8.0
        expected = (3.0 * advantages.abs()).mean().item()
        unclipped = (torch.exp(torch.tensor(8.0)) * advantages.abs()).mean().item()
    loss, grad = _loss_and_grad_norm(trainer, inputs)
    assert loss == pytest.approx(expected, rel=1e-4)
    assert grad == 0.0
    trainer.deferred_metrics.flush()  # tensor metrics are read once per optimizer step; no step ran here
    assert trainer._metrics["train"]["clip_ratio/region_mean"][-1] == pytest.approx(1.0)
    trainer.args.delta = None
    loss, grad = _loss_and_grad_norm(trainer, inputs)
    assert loss == pytest.approx(unclipped, rel=1e-3) and grad > 0


def test_rloo_sequence_dual_clip_that_never_binds_is_trls_loss(tmp_path, tiny_model_dir, task, dataset):
    """delta far beyond any ratio: the sequence-level dual-clip loss trains exactly like TRL's own loss."""
    kwargs = cpu_kwargs(tmp_path, **SGD)
    theirs, _ = train(trl.RLOOTrainer, trl.RLOOConfig(**kwargs), tiny_model_dir, task, dataset)
    ours, _ = train(RLOOTrainer, RLOOConfig(**kwargs, delta=1e6), tiny_model_dir, task, dataset)
    assert not ours.tricks_active
    assert logged(ours, "loss") == pytest.approx(logged(theirs, "loss"), abs=1e-7)
    assert max_param_difference(ours, theirs) < 1e-6


def test_rloo_delta_off_is_trls_loss_and_bad_delta_is_refused(tmp_path):
    assert RLOOConfig(**cpu_kwargs(tmp_path)).delta is None
    with pytest.raises(ValueError, match=r"delta=1.1 must be >= 1 \+ epsilon_high = 1.2"):
        RLOOConfig(**cpu_kwargs(tmp_path), delta=1.1)
    assert RLOOConfig(**cpu_kwargs(tmp_path), delta=2.0).ablation_switches()["dual_clip"] == {"delta": None}


def test_rloo_kl_in_the_loss_with_bias_correction_uses_the_sampling_logprobs(tmp_path, tiny_model_dir, task, dataset):
    config = RLOOConfig(**cpu_kwargs(tmp_path, max_steps=2, num_iterations=2), beta=0.0, kl_coef=0.05,
                        kl_placement="loss", kl_estimator="k1", use_bias_correction_kl=True)  # fmt: skip
    trainer = RLOOTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    inputs = _rloo_batch(trainer, dataset)
    assert inputs["advantages"].dim() == 1 and "old_per_token_logps" in inputs and "ref_per_token_logps" in inputs
    trainer.train()
    assert all(torch.isfinite(torch.tensor(logged(trainer, "loss"))))
    with pytest.raises(ValueError, match="use_bias_correction_kl=True corrects a KL term in the loss"):
        RLOOConfig(**cpu_kwargs(tmp_path), beta=0.05, use_bias_correction_kl=True)
    with pytest.raises(ValueError, match="kl_placement='token_reward'"):
        RLOOConfig(**cpu_kwargs(tmp_path), beta=0.0, kl_coef=0.05, use_bias_correction_kl=True)


# --- GRPO's advantage-side options on REINFORCE++ -------------------------------------------------------------


def test_grpo_beta_becomes_the_reinforce_pp_kl_coefficient(tmp_path, tiny_model_dir, task, dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_basics"):
        trainer = ReinforcePlusPlusTrainer(
            model=tiny_model_dir, reward_funcs=task.reward_func, train_dataset=dataset,
            args=trl.GRPOConfig(**cpu_kwargs(tmp_path, max_steps=1), beta=0.04),
        )  # fmt: skip
    assert (trainer.args.kl_coef, trainer.args.beta, trainer.beta) == (0.04, 0.0, 0.0)
    messages = [r.getMessage() for r in caplog.records if "became REINFORCE++'s KL coefficient" in r.getMessage()]
    assert len(messages) == 1 and "kl_coef=0.04" in messages[0] and "kl_placement='token_reward'" in messages[0]
    trainer.train()
    assert logged(trainer, "tricks/kl_shaping/coef") == [0.04]


def test_grpo_batch_scaling_becomes_global_whitening(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="trl_basics"):
        config = ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path), whiten_advantages=False, scale_rewards="batch")
    assert config.whiten_advantages and config.scale_rewards == "none"
    assert any("scale_rewards='batch' became" in r.getMessage() for r in caplog.records)


def test_normalize_then_sum_z_scores_each_reward_function_within_its_group(tmp_path, tiny_model_dir, task, dataset):
    def length_reward(completions, **kwargs):
        return [float(len(c)) for c in completions]

    config = ReinforcePlusPlusConfig(
        **cpu_kwargs(tmp_path, max_steps=1, max_completion_length=8),
        multi_objective_aggregation="normalize_then_sum",
        reward_weights=[1.0, 0.5],
    )
    trainer = ReinforcePlusPlusTrainer(model=tiny_model_dir, reward_funcs=[task.reward_func, length_reward],
                                       args=config, train_dataset=dataset)  # fmt: skip
    seen = {}
    original = trainer.build_rollout
    trainer.build_rollout = lambda out, recorded: seen.setdefault("rollout", original(out, recorded))
    trainer.model.train()
    trainer._generate_and_score_completions([dataset[i] for i in range(8)])
    per_func = trainer._rewards_per_func.view(2, 4, 2)  # (groups, generations, functions)
    z = (per_func - per_func.mean(dim=1, keepdim=True)) / (per_func.std(dim=1, keepdim=True) + 1e-4)
    expected = (z * torch.tensor([1.0, 0.5])).sum(dim=2).view(-1)
    torch.testing.assert_close(seen["rollout"].rewards, expected)
    assert not torch.allclose(expected, trainer.scalar_rewards())


@pytest.mark.parametrize("options", [{"loss_type": "vespo"}, {"off_policy_mask_threshold": 0.01, "num_iterations": 2}])
def test_reinforce_pp_takes_vespo_and_the_off_policy_mask(tmp_path, tiny_model_dir, task, dataset, options):
    config = ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path, max_steps=2), **options)
    trainer = ReinforcePlusPlusTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config,
                                       train_dataset=dataset)  # fmt: skip
    trainer.train()
    assert all(torch.isfinite(torch.tensor(logged(trainer, "loss"))))


def test_forward_keys_are_passed_to_the_dual_clip_loss():
    assert "pixel_values" in FORWARD_KEYS  # the sequence-level dual-clip loss forwards multimodal inputs like TRL
