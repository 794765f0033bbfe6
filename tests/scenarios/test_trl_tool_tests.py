"""TRL's tool and environment tests (``tests/test_grpo_trainer.py``: ``test_training_with_tools`` and its
``environment_factory`` counterpart), run with every GRPO-based trainer here and compared with ``trl.GRPOTrainer``.

As in TRL, ``generate`` is patched to emit fixed completions, written with the kit's byte-level tokenizer: a valid
tool call, a call with a wrong argument name (the tool fails) and plain text; after the tool output, each rollout that
called says ``Done!``. The kit model and tokenizer replace TRL's hub models, and the kit's ``tool_call_reward``
replaces its reward model. Every trainer must see the same calls, failures, completions and ``tool_mask`` as
``GRPOTrainer``, and take a step.
"""

from __future__ import annotations

import pytest
import torch
import trl
from helpers import cpu_kwargs

from trl_basics import PPOMaxConfig, PPOMaxTrainer, ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
from trl_basics.kit.tool_tasks import GUESS_NUMBER_TASK, MULTIPLY_TOOL_TASK, tool_call_reward

TRAINERS = {
    "grpo": (trl.GRPOTrainer, trl.GRPOConfig, {}),
    "reinforce_pp": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "none"}),
    "reinforce_pp_baseline": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "group"}),
    "rloo_grpo": (
        ReinforcePlusPlusTrainer,
        ReinforcePlusPlusConfig,
        {"advantage_estimator": "rloo", "whiten_advantages": False, "loss_type": "luspo"},
    ),
    "ppo_max": (PPOMaxTrainer, PPOMaxConfig, {"critic_init": "policy", "critic_learning_rate": 3e-3}),
}
OURS = [name for name in TRAINERS if name != "grpo"]

CALLS = {
    "tools": (
        '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call><|im_end|>',
        '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "c": 4}}\n</tool_call><|im_end|>',
        "I don't know any tool<|im_end|>",
    ),
    "environment_factory": (
        '<tool_call>\n{"name": "guess", "arguments": {"number": 8}}\n</tool_call><|im_end|>',
        '<tool_call>\n{"name": "guess", "arguments": {"guess": 8}}\n</tool_call><|im_end|>',
        "I don't know any tool<|im_end|>",
    ),
}


def fake_generate_for(tokenizer, column):
    first = [tokenizer(text)["input_ids"] for text in CALLS[column]]
    done = tokenizer("Done!<|im_end|>")["input_ids"]

    def fake_generate(input_ids, **kwargs):
        rows = first if input_ids.shape[0] == 3 else [done] * input_ids.shape[0]
        width = max(len(r) for r in rows)
        padded = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows]
        return torch.cat([input_ids, torch.tensor(padded, device=input_ids.device)], dim=-1)

    return fake_generate


def run(name, column, tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer_cls, config_cls, fixed = TRAINERS[name]
    config = config_cls(
        **cpu_kwargs(
            tmp_path / name,
            learning_rate=0.1,
            per_device_train_batch_size=3,
            num_generations=3,
            max_completion_length=64,
            max_steps=1,
            **fixed,
        )
    )
    task = MULTIPLY_TOOL_TASK if column == "tools" else GUESS_NUMBER_TASK
    entry = {"tools": list(task.tools)} if column == "tools" else {"environment_factory": task.environment_factory}
    trainer = trainer_cls(
        model=model_dir,
        reward_funcs=[task.reward_func, tool_call_reward],
        args=config,
        train_dataset=task.make_dataset(3, seed=0),
        **entry,
    )
    batches = []
    original = trainer._generate_and_score_completions

    def spy(inputs):
        out = original(inputs)
        batches.append(out)
        return out

    trainer._generate_and_score_completions = spy
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    monkeypatch.setattr(trainer.model, "generate", fake_generate_for(trainer.processing_class, column))
    trainer.train()
    return trainer, batches[0], before


@pytest.fixture(scope="module")
def reference(tmp_path_factory, byte_model_dir):
    """``trl.GRPOTrainer`` on both set-ups, run once."""
    results = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for column in CALLS:
            trainer, batch, _ = run("grpo", column, tmp_path_factory.mktemp("grpo"), byte_model_dir, monkeypatch)
            results[column] = (trainer.state.log_history, batch)
    return results


@pytest.mark.parametrize("column", list(CALLS))
@pytest.mark.parametrize("name", OURS)
def test_training_with_tools_as_grpo(name, column, tmp_path, byte_model_dir, reference, monkeypatch):
    trainer, batch, before = run(name, column, tmp_path, byte_model_dir, monkeypatch)
    their_history, their_batch = reference[column]
    logs = trainer.state.log_history[-2]
    assert logs["tools/call_frequency"] == pytest.approx(2 / 3)
    assert logs["tools/failure_frequency"] == pytest.approx(1 / 2)
    assert their_history[-2]["tools/call_frequency"] == pytest.approx(2 / 3)
    assert their_history[-2]["tools/failure_frequency"] == pytest.approx(1 / 2)
    for key in ("prompt_ids", "completion_ids", "completion_mask", "tool_mask"):
        assert torch.equal(batch[key], their_batch[key]), key
    assert (batch["tool_mask"] == 0).any()
    if batch["advantages"].dim() == 2:  # per-token advantages: nothing on the tool outputs
        holes = batch["completion_mask"].bool() & ~batch["tool_mask"].bool()
        assert batch["advantages"][holes].abs().sum() == 0
    for n, param in before.items():
        if trainer.model.get_parameter(n).requires_grad:
            assert not torch.equal(param, trainer.model.get_parameter(n)), f"Parameter {n} has not changed."
    if column == "environment_factory":
        # The valid call reached its environment, which the reward read; the failed one left its state untouched.
        assert sorted(len(env.guesses) for env in trainer.environments) == [0, 0, 1]
