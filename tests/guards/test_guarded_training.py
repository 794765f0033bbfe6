"""Bad inputs and faults: each gets a clear error or a counted, documented policy, and no NaN reaches the weights."""

import math

import pytest
import torch
from helpers import cpu_kwargs, logged

from trl_basics import (
    ReinforcePlusPlusConfig,
    ReinforcePlusPlusTrainer,
    RLOOConfig,
    RLOOTrainer,
)
from trl_basics.guards import NonFiniteGradientGuard


def weights(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters()}


def all_finite(trainer):
    return all(torch.isfinite(p).all() for p in trainer.model.parameters())


def rloo(tmp_path, tiny_model_dir, dataset, reward, **overrides):
    config = RLOOConfig(**cpu_kwargs(tmp_path, **overrides))
    return RLOOTrainer(model=tiny_model_dir, reward_funcs=reward, args=config, train_dataset=dataset)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), None], ids=["nan", "inf", "-inf", "None"])
def test_unscorable_rewards_are_counted_and_never_reach_the_weights(bad, tmp_path, tiny_model_dir, dataset):
    def flaky(prompts, completions, **kwargs):
        return [bad if i % 3 == 0 else float(len(c)) for i, c in enumerate(completions)]

    trainer = rloo(tmp_path, tiny_model_dir, dataset, flaky, reward_norm="running")
    trainer.train()
    assert all_finite(trainer)
    metric = "reward_guard/flaky/none" if bad is None else "reward_guard/flaky/nonfinite"
    assert logged(trainer, metric) == [3.0, 3.0]  # 8 completions per step: indices 0, 3, 6
    assert all(math.isfinite(v) for v in logged(trainer, "advantages/mean"))


@pytest.mark.parametrize(
    ("reward", "error", "message"),
    [
        (lambda prompts, completions, **kw: [1.0], ValueError, "returned 1 rewards for 8 completions"),
        (lambda prompts, completions, **kw: ["good"] * len(completions), TypeError, "rewards must be numbers"),
        (lambda prompts, completions, **kw: 1.0, TypeError, "must return a list"),
        (lambda prompts, completions, **kw: 1 / 0, RuntimeError, "raised ZeroDivisionError"),
    ],
    ids=["wrong-length", "wrong-type", "not-a-list", "raises"],
)
def test_broken_reward_functions_name_the_function(reward, error, message, tmp_path, tiny_model_dir, dataset):
    reward.__name__ = "my_reward"
    trainer = rloo(tmp_path, tiny_model_dir, dataset, reward)
    with pytest.raises(error, match=message) as err:
        trainer.train()
    assert "my_reward" in str(err.value)


def test_zero_variance_rewards_leave_the_weights_alone(tmp_path, tiny_model_dir, dataset):
    """Constant rewards: every leave-one-out advantage is 0, whitening of a zero-variance batch stays 0, and the
    optimizer step moves nothing."""
    trainer = rloo(
        tmp_path, tiny_model_dir, dataset, lambda prompts, completions, **kw: [1.0] * len(completions),
        beta=0.0, whiten_advantages=True,
    )  # fmt: skip
    before = weights(trainer)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param, before[name], msg=name)
    assert logged(trainer, "advantages/std") == [0.0, 0.0]


def test_all_completions_truncated(tmp_path, tiny_model_dir, task, dataset):
    """With mask_truncated_completions and a 1-token cap nearly every completion is masked: training runs, stays
    finite, and the masked rows carry no advantage."""
    config = ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path, max_completion_length=1), mask_truncated_completions=True)
    trainer = ReinforcePlusPlusTrainer(model=tiny_model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset)
    trainer.train()
    assert all_finite(trainer)
    assert all(math.isfinite(v) for v in logged(trainer, "loss"))


def test_non_finite_gradient_skips_the_step(tmp_path, tiny_model_dir, task, dataset):
    trainer = rloo(tmp_path, tiny_model_dir, dataset, task.reward_func)
    before = weights(trainer)
    # Poison one parameter's gradient: the whole step must be skipped, every parameter unchanged.
    next(trainer.model.parameters()).register_hook(lambda grad: grad * float("nan"))
    trainer.train()
    for name, param in trainer.model.named_parameters():
        torch.testing.assert_close(param, before[name], msg=name)
    assert trainer.gradient_guard.skipped == 2
    assert logged(trainer, "guard/skipped_steps") == [1.0, 2.0]


def test_gradient_guard_passes_finite_gradients():
    model = torch.nn.Linear(2, 1)
    model(torch.ones(1, 2)).sum().backward()
    guard = NonFiniteGradientGuard()
    guard.on_pre_optimizer_step(None, None, None, model=model)
    assert guard.skipped == 0 and all(p.grad is not None for p in model.parameters())


def test_prompt_longer_than_the_context_is_refused_at_init(tmp_path, tiny_model_dir, task):
    import datasets

    long_prompt = "say : digits " + "a " * 300  # the tiny model has 256 positions
    data = datasets.Dataset.from_dict({"prompt": ["say : digits ", long_prompt]})
    with pytest.raises(ValueError, match=r"1 of the first 2 prompts do not fit the model's context.*prompt 1"):
        RLOOTrainer(
            model=tiny_model_dir, reward_funcs=task.reward_func, args=RLOOConfig(**cpu_kwargs(tmp_path)),
            train_dataset=data,
        )  # fmt: skip


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path, tiny_model_dir, task, dataset):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    trainer = RLOOTrainer(
        model=tiny_model_dir, reward_funcs=task.reward_func, args=RLOOConfig(**cpu_kwargs(tmp_path)),
        train_dataset=dataset, processing_class=tokenizer,
    )  # fmt: skip
    assert trainer.processing_class.pad_token == trainer.processing_class.eos_token
    trainer.train()
    assert all_finite(trainer)


@pytest.mark.parametrize("path", ["/no/such/reward-model", "./missing-rm"])
def test_missing_reward_model_is_refused_before_loading(path, tmp_path, tiny_model_dir, dataset):
    with pytest.raises(ValueError, match="does not exist"):
        RLOOTrainer(model=tiny_model_dir, reward_funcs=path, args=RLOOConfig(**cpu_kwargs(tmp_path)), train_dataset=dataset)


def test_reward_model_folder_without_config_is_refused(tmp_path, tiny_model_dir, dataset):
    (tmp_path / "rm").mkdir()
    with pytest.raises(ValueError, match="has no config.json"):
        RLOOTrainer(
            model=tiny_model_dir, reward_funcs=str(tmp_path / "rm"), args=RLOOConfig(**cpu_kwargs(tmp_path)),
            train_dataset=dataset,
        )  # fmt: skip


def test_trust_remote_code_is_off_by_default(tmp_path):
    assert RLOOConfig(**cpu_kwargs(tmp_path)).trust_remote_code is False
    assert ReinforcePlusPlusConfig(**cpu_kwargs(tmp_path)).trust_remote_code is False
