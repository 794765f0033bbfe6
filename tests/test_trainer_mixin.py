"""A trick gets what it declares it needs, whoever wrote it: a third-party trick that puts a KL-like term in the loss
is treated exactly as the built-in KL shaping in the loss (reference model loaded with β = 0, reference log-probs in
the loss, also at evaluation)."""

from __future__ import annotations

import pytest
import torch
from helpers import cpu_kwargs

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
        return kl_loss(kl_k2(inputs.logprobs, inputs.ref_logprobs) * mask, mask, COEF)


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
