"""A trick gets what it declares it needs, whoever wrote it: a third-party trick that puts a KL-like term in the loss
is treated exactly as the built-in KL shaping in the loss (reference model loaded with β = 0, reference log-probs in
the loss, also at evaluation)."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_kwargs, logged, model_with_short_completions

from trl_basics import (
    ReinforcePlusPlusConfig,
    ReinforcePlusPlusTrainer,
    Requirements,
    RLOOConfig,
    RLOOTrainer,
    Stage,
    Trick,
    get_plugin_manager,
    hookimpl,
)
from trl_basics.functional import kl_k2, kl_loss

COEF = 0.2


class ThirdPartyKL(Trick):
    """β·mean k2 in the loss, written against the public API only."""

    name = "third_party_kl"
    stage = Stage.LOSS

    def requirements(self) -> Requirements:
        return Requirements(reference_logprobs=True, reference_model=True, loss_reference_logprobs=True)

    def loss(self, inputs, ctx):
        mask = inputs.completion_mask.to(inputs.logprobs.dtype)
        if inputs.ref_logprobs is None:
            raise AssertionError("the trainer did not give the reference log-probs this trick declared it needs")
        kl = kl_k2(inputs.logprobs, inputs.ref_logprobs) * mask
        return kl_loss(kl, mask, COEF, normalizer=inputs.token_normalizer)


class Plugin:
    @hookimpl
    def trl_basics_register_tricks(self, register):
        register(ThirdPartyKL)


TRAINERS = {
    "reinforce_pp": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"kl_coef": None}),
    "rloo": (RLOOTrainer, RLOOConfig, {"beta": 0.0}),
}


def _train_and_evaluate(name, flags, tmp_path, tiny_model_dir, task, dataset):
    trainer_cls, config_cls, base = TRAINERS[name]
    named = flags.pop("tricks", [])
    config = config_cls(**cpu_kwargs(tmp_path, max_steps=2, per_device_eval_batch_size=8), **{**base, **flags})
    # The config checks trick names against the installed plugins; this one is registered inline, on the trainer's
    # plugin manager, so it is named after the config is built.
    config.tricks = named
    trainer = trainer_cls(
        model=tiny_model_dir,
        reward_funcs=task.reward_func,
        args=config,
        train_dataset=dataset,
        eval_dataset=task.make_dataset(8, seed=1),
        plugin_manager=get_plugin_manager(autoload=False, plugins=[Plugin()]),
    )
    assert trainer.beta == 0.0 and trainer.ref_model is not None  # loaded for the trick, with the parent's β at 0
    torch.manual_seed(0)
    trainer.train()
    torch.manual_seed(1)
    metrics = trainer.evaluate()
    return trainer, metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_a_third_party_kl_term_gets_what_the_builtin_gets(name, tmp_path, tiny_model_dir, task, dataset):
    builtin, builtin_metrics = _train_and_evaluate(
        name,
        {"kl_coef": COEF, "kl_placement": "loss", "kl_estimator": "k2"},
        tmp_path / "builtin",
        tiny_model_dir,
        task,
        dataset,
    )
    plugin, plugin_metrics = _train_and_evaluate(
        name, {"tricks": ["third_party_kl"]}, tmp_path / "plugin", tiny_model_dir, task, dataset
    )
    assert plugin.requirements.loss_reference_logprobs and plugin.requirements.reference_logprobs
    # The same loss terms on the same rollouts: the same training and the same evaluation loss, both with a KL term.
    for (key, ours), theirs in zip(
        plugin.model.state_dict().items(), builtin.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(ours, theirs, msg=f"parameter {key} differs", rtol=1e-5, atol=1e-6)
    builtin_kl = builtin_metrics["eval_tricks/kl_shaping/loss"]
    plugin_kl = plugin_metrics["eval_tricks/third_party_kl/loss"]
    assert plugin_kl > 0 and plugin_kl == pytest.approx(builtin_kl, rel=1e-5)
    assert plugin_metrics["eval_loss"] == pytest.approx(builtin_metrics["eval_loss"], rel=1e-5, abs=1e-7)


# --- loss-stage terms over the accumulation window ------------------------------------------------------------------

WINDOW = 8  # completions per optimizer step
# KL in the loss (k1 weighted by π_θ/π_old has a gradient at the first step, where π_θ = π_ref) and the entropy bonus
LOSS_TRICKS = {
    "kl_coef": 0.5,
    "kl_placement": "loss",
    "kl_estimator": "k1",
    "use_bias_correction_kl": True,
    "entropy_bonus_coef": 0.1,
}


def _first_policy_grad_norm(tmp_path, model_dir, task, dataset, accumulation, **flags):
    config = ReinforcePlusPlusConfig(
        **cpu_kwargs(
            tmp_path / f"ga{accumulation}",
            per_device_train_batch_size=WINDOW // accumulation,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            max_completion_length=6,
            loss_type="dapo",
        ),
        **flags,
    )
    trainer = ReinforcePlusPlusTrainer(
        model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset
    )
    trainer.train()
    # The window's completions hold different numbers of tokens, so the split into micro-batches could matter.
    assert logged(trainer, "completions/min_length")[0] < logged(trainer, "completions/max_length")[0]
    return logged(trainer, "grad_norm")[0]


@pytest.mark.slow
def test_loss_stage_terms_are_token_means_over_the_accumulation_window(
    tmp_path, tiny_model_dir, task, dataset, monkeypatch
):
    """1, 2 or 4 accumulated micro-batches give the update of one batch of the whole window, with KL in the loss and
    the entropy bonus on (the ``dapo`` policy loss is window-normalised by TRL)."""
    tiny_model_dir = model_with_short_completions(tiny_model_dir, tmp_path)
    norms = {ga: _first_policy_grad_norm(tmp_path, tiny_model_dir, task, dataset, ga, **LOSS_TRICKS) for ga in (1, 2, 4)}
    for ga in (2, 4):
        assert norms[ga] == pytest.approx(norms[1], rel=1e-5), norms

    # The terms matter here: without them the update is different ...
    plain = _first_policy_grad_norm(tmp_path / "plain", tiny_model_dir, task, dataset, 1, kl_coef=None)
    assert plain != pytest.approx(norms[1], rel=1e-3)
    # ... and each micro-batch as its own token mean (the rule without the window's count) changes it: the test can
    # tell the two rules apart.
    monkeypatch.setattr(ReinforcePlusPlusTrainer, "loss_token_normalizer", lambda self, inputs: None)
    per_micro_batch = _first_policy_grad_norm(tmp_path / "off", tiny_model_dir, task, dataset, 4, **LOSS_TRICKS)
    assert per_micro_batch != pytest.approx(norms[1], rel=1e-4), (per_micro_batch, norms)


@pytest.mark.parametrize("name", sorted(TRAINERS))
def test_a_kl_coefficient_of_zero_measures_the_kl_without_a_penalty(name, tmp_path, tiny_model_dir, task, dataset):
    """``kl_coef=0.0`` (not ``None``) keeps the KL trick on: π_ref comes from a reference model even though no penalty
    is applied, and the KL is logged (a full fine-tune has no other π_ref)."""
    trainer_cls, config_cls, base = TRAINERS[name]
    config = config_cls(**cpu_kwargs(tmp_path, max_steps=2), **{**base, "kl_coef": 0.0})
    trainer = trainer_cls(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    assert trainer.ref_model is not None
    trainer.train()
    kl = logged(trainer, "tricks/kl_shaping/k1_sequence_mean")
    assert len(kl) == 2 and kl[0] == 0.0 and kl[1] > 0.0  # π = π_ref before the first update only
    assert logged(trainer, "tricks/kl_shaping/coef") == [0.0, 0.0]
