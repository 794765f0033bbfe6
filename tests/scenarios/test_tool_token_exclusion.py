"""Tool-output tokens count for nothing, end to end: the same rollouts with a short tool output and with a longer,
different one give the same advantages, KL, value targets, loss and gradients on the policy's tokens.

Each GRPO-based trainer trains one step through TRL's real tool loop twice. The generations are fixed (``generate``
is patched, as in TRL's tool tests): each rollout opens with a ``multiply`` call (one answers in plain text), the tool
runs, and the model's next turn is fixed text. Run A's tool answers ``"6"``; run B's answers with a sentence several
times longer, so B's holes (``tool_mask`` 0) are longer and hold other tokens. Nothing else differs.

For the comparison to be exact the policy must not read the tool output through attention, so the model here is the
kit's byte model with every attention output projection zeroed: each position's logits depend on its own token only.
The policy is then moved off the reference model, so the KL is non-zero at every token (tool outputs included), and
the tool-output tokens have log-probabilities, entropies, KL terms and (PPO-max) values of their own. If any of them
reached an advantage, a return, a KL penalty, a whitening statistic, the critic's loss or a loss normaliser (a token
count), run B would differ from run A. Gradients are compared for every parameter except the attention output
projections, whose gradient legitimately reads the context.
"""

from __future__ import annotations

import functools

import pytest
import torch
from helpers import cpu_kwargs, logged
from transformers import AutoModelForCausalLM, TrainerCallback

from trl_basics import PPOMaxConfig, PPOMaxTrainer, ReinforcePlusPlusConfig, ReinforcePlusPlusTrainer
from trl_basics.kit.tool_tasks import MULTIPLY_TOOL_TASK, multiply

TRAINERS = {
    "reinforce_pp": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "none"}),
    "reinforce_pp_baseline": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "group"}),
    "rloo_grpo": (
        ReinforcePlusPlusTrainer,
        ReinforcePlusPlusConfig,
        {"advantage_estimator": "rloo", "whiten_advantages": False, "loss_type": "luspo"},
    ),
    "ppo_max": (PPOMaxTrainer, PPOMaxConfig, {"critic_init": "policy", "critic_learning_rate": 3e-3}),
}
# KL in the token rewards (the presets: k1, kl_coef 0.01 for REINFORCE++, PPO-max's own) and KL in the loss (k2),
# with whitening, advantage clipping, reward normalisation and an entropy bonus.
SETTINGS = {
    "kl_in_reward": {"kl_coef": 0.1},
    "kl_in_loss": {
        "kl_coef": 0.1,
        "kl_estimator": "k2",
        "kl_placement": "loss",
        "whiten_advantages": True,
        "advantage_clip": 3.0,
        "reward_norm": "running",
        "entropy_bonus_coef": 0.01,
    },
}
CASES = [(t, s) for t in TRAINERS for s in SETTINGS]
POST_TOOL = "Done, that is the product.<|im_end|>"
PLAIN = "I can multiply that myself: 6.<|im_end|>"


def row_reward(prompts, completions, a, b, **kwargs):
    """A reward that differs between rollouts (whether a tool was called, the prompt) and never reads the tool output."""
    called = [any(m["role"] == "tool" for m in c) for c in completions]
    return [float(c) + ((x + 2 * y) % 5) / 5 for c, x, y in zip(called, a, b, strict=True)]


@functools.wraps(multiply)
def wordy_multiply(a: int, b: int) -> str:
    return f"The product of {a} and {b}, as computed by the calculator tool, is {int(a) * int(b)}. " * 2


@pytest.fixture(scope="module")
def context_free_model_dir(tmp_path_factory, byte_model_dir):
    """The byte model with every attention output projection zeroed: no position reads another."""
    model = AutoModelForCausalLM.from_pretrained(byte_model_dir)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    path = tmp_path_factory.mktemp("context-free-byte")
    model.save_pretrained(path)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(byte_model_dir).save_pretrained(path)
    return str(path)


def fake_generate_for(tokenizer, rows: int):
    """First turn: a call per rollout (the last one answers in plain text); after a tool output: ``POST_TOOL``."""
    response = tokenizer.convert_tokens_to_ids("<tool_response>")
    calls = [
        f'<tool_call>\n{{"name": "multiply", "arguments": {{"a": {i + 2}, "b": 3}}}}\n</tool_call><|im_end|>'
        for i in range(rows - 1)
    ]
    first = [tokenizer(text)["input_ids"] for text in [*calls, PLAIN]]
    after = tokenizer(POST_TOOL)["input_ids"]

    def fake_generate(input_ids, **kwargs):
        later = bool((input_ids == response).any())
        out = [after] * input_ids.shape[0] if later else first[: input_ids.shape[0]]
        width = max(len(r) for r in out)
        padded = [r + [tokenizer.pad_token_id] * (width - len(r)) for r in out]
        return torch.cat([input_ids, torch.tensor(padded, device=input_ids.device)], dim=-1)

    return fake_generate


class GradientRecorder(TrainerCallback):
    def __init__(self):
        self.grads = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def run(trainer_id, setting, tool, output_dir, model_dir, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer_cls, config_cls, fixed = TRAINERS[trainer_id]
    kwargs = cpu_kwargs(
        output_dir,
        max_steps=1,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=256,
        max_tool_calling_iterations=1,
        max_grad_norm=0.0,  # clipping would mix in the attention projections' context-dependent gradients
        **{**fixed, **SETTINGS[setting]},
    )
    recorder = GradientRecorder()
    trainer = trainer_cls(
        model=model_dir,
        reward_funcs=row_reward,
        args=config_cls(**kwargs),
        train_dataset=MULTIPLY_TOOL_TASK.make_dataset(2, seed=0),
        tools=[tool],
        callbacks=[recorder],
    )
    with torch.no_grad():  # the policy leaves the reference model: a KL at every token, tool outputs included
        generator = torch.Generator().manual_seed(0)
        for name, param in trainer.model.named_parameters():
            if "mlp" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    batches = []
    original = trainer._generate_and_score_completions

    def spy(inputs):
        out = original(inputs)
        batches.append(out)
        return out

    trainer._generate_and_score_completions = spy
    monkeypatch.setattr(trainer.model, "generate", fake_generate_for(trainer.processing_class, 4))
    trainer.train()
    return trainer, batches[0], recorder.grads


def policy_values(batch, key):
    """Per row, the values of ``batch[key]`` on the policy's tokens, in order."""
    mask = (batch["completion_mask"] * batch["tool_mask"]).bool()
    return [row[m] for row, m in zip(batch[key], mask, strict=True)]


@pytest.mark.parametrize(("trainer_id", "setting"), CASES, ids=[f"{t}-{s}" for t, s in CASES])
def test_tool_output_tokens_change_nothing(trainer_id, setting, tmp_path, context_free_model_dir, monkeypatch):
    short, short_batch, short_grads = run(
        trainer_id, setting, multiply, tmp_path / "short", context_free_model_dir, monkeypatch
    )
    long, long_batch, long_grads = run(
        trainer_id, setting, wordy_multiply, tmp_path / "long", context_free_model_dir, monkeypatch
    )
    # The set-up: B's holes are longer and hold other tokens; the policy's tokens are the same.
    holes = [(~b["tool_mask"].bool() & b["completion_mask"].bool()).sum(1) for b in (short_batch, long_batch)]
    assert (holes[0][:3] > 0).all() and holes[0][3] == 0
    assert (holes[1][:3] >= holes[0][:3] + 30).all(), holes
    for a, b in zip(policy_values(short_batch, "completion_ids"), policy_values(long_batch, "completion_ids")):
        assert torch.equal(a, b)
    assert logged(short, "tools/call_frequency") == logged(long, "tools/call_frequency") == [0.75]

    # Advantages (and PPO-max's value targets) on the policy's tokens; nothing on a tool output.
    keys = ["advantages"] + (["returns"] if "returns" in short_batch else [])
    for key in keys:
        if short_batch[key].dim() == 2:
            for a, b in zip(policy_values(short_batch, key), policy_values(long_batch, key), strict=True):
                torch.testing.assert_close(a, b)
            long_holes = long_batch["completion_mask"].bool() & ~long_batch["tool_mask"].bool()
            assert long_batch[key][long_holes].abs().sum() == 0, key
        else:
            torch.testing.assert_close(short_batch[key], long_batch[key])
    assert short_batch["advantages"].abs().sum() > 0

    # The loss, the KL and the critic's loss, as logged.
    logs = [next(e for e in t.state.log_history if "loss" in e) for t in (short, long)]
    # Not the critic's gradient norm: it covers the critic's attention output projections, which read the context.
    compared = [
        k for k in logs[0] if k == "loss" or "kl" in k or "entropy" in k or k.startswith(("value/", "advantages/"))
    ]
    compared = [k for k in compared if "grad_norm" not in k]
    assert "loss" in compared and any("kl" in k for k in compared), sorted(logs[0])
    if trainer_id == "ppo_max":
        assert "value/loss" in compared
    for key in compared:
        # Rounding differs between the two runs' sequence widths (relative 3e-5 seen); counting a tool output moved
        # the loss by 1% or more in every configuration where it could matter.
        assert logs[1][key] == pytest.approx(logs[0][key], rel=2e-4, abs=1e-6), key
    kl_keys = [k for k in compared if "kl" in k and logs[0][k] != 0]
    assert kl_keys, "the KL is zero: the comparison would not see a KL counted on tool outputs"

    # The gradients, but for the attention output projections (their gradient reads the context).
    compared_grads = [n for n in short_grads if "o_proj" not in n]
    assert compared_grads and set(compared_grads) <= set(long_grads)
    for name in compared_grads:
        torch.testing.assert_close(long_grads[name], short_grads[name], rtol=1e-4, atol=1e-7, msg=name)
    assert any(short_grads[n].abs().sum() > 0 for n in compared_grads)
