"""The PPO-max critic on its own: a tiny Llama token classifier built in code, one CPU process, no trainer."""

import copy

import pytest
import torch
from accelerate import Accelerator
from transformers import LlamaConfig, LlamaForSequenceClassification, LlamaForTokenClassification

from trl_basics import PPOMaxConfig, checkpoints
from trl_basics.functional import clipped_value_loss
from trl_basics.ppo_max import Critic, CriticStats, critic_values

VOCAB, PROMPT, COMPLETION = 32, 3, 4


def tiny_config(**overrides):
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, num_labels=1, classifier_dropout=0.0,
        token_classification_bias=False, **overrides,
    )  # fmt: skip
    return config


def tiny_model(seed=0, cls=LlamaForTokenClassification):
    torch.manual_seed(seed)
    return cls(tiny_config()).train()


@pytest.fixture(scope="module")
def base_args(tmp_path_factory):
    settings = {
        "output_dir": str(tmp_path_factory.mktemp("critic")), "use_cpu": True, "bf16": False,
        "gradient_checkpointing": False, "report_to": "none", "learning_rate": 0.1, "critic_learning_rate": 0.1,
        "critic_max_grad_norm": 0.0, "per_device_train_batch_size": 2,
    }  # fmt: skip
    return PPOMaxConfig(**settings)


@pytest.fixture(scope="module")
def accelerator(base_args):
    return Accelerator(cpu=True)  # after the config: building a TrainingArguments resets accelerate's state


@pytest.fixture
def make_args(base_args):
    def make(**overrides):
        args = copy.copy(base_args)
        for name, value in overrides.items():
            setattr(args, name, value)
        return args

    return make


def sgd_critic(accelerator, args, seed=0):
    """A critic stepped by plain SGD, so that a step moves each parameter by exactly -lr · gradient."""
    model = tiny_model(seed)
    return Critic(model, torch.optim.SGD(model.parameters(), lr=args.critic_learning_rate), accelerator, args)


def make_batch(rows, seed=0, completion_mask=None):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, COMPLETION, dtype=torch.long) if completion_mask is None else completion_mask
    return {
        "prompt_ids": torch.randint(1, VOCAB, (rows, PROMPT), generator=generator),
        "prompt_mask": torch.ones(rows, PROMPT, dtype=torch.long),
        "completion_ids": torch.randint(1, VOCAB, (rows, COMPLETION), generator=generator),
        "completion_mask": mask,
        "old_values": 0.5 * torch.randn(rows, COMPLETION, generator=generator),
        "returns": torch.randn(rows, COMPLETION, generator=generator),
    }


def rows(batch, start, end):
    return {name: tensor[start:end] for name, tensor in batch.items()}


def params(module):
    return {name: param.detach().clone() for name, param in module.named_parameters()}


def delta(after, before):
    return torch.cat([(after[name] - before[name]).reshape(-1) for name in sorted(before)])


def test_values_are_the_state_before_each_token_zero_where_inactive_and_without_gradient(
    tmp_path, accelerator, make_args
):
    critic = sgd_critic(accelerator, make_args(per_device_train_batch_size=2))
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    batch = make_batch(3, completion_mask=mask)
    values = critic.values(batch)
    assert values.shape == (3, COMPLETION) and values.dtype == torch.float32 and not values.requires_grad
    assert torch.all(values[mask == 0] == 0) and torch.all(values[mask == 1] != 0)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], mask], dim=1)
    with torch.no_grad():  # one forward of all three rows; the critic ran them in chunks of two
        logits = critic.model(input_ids=ids, attention_mask=attention).logits[..., 0]
    torch.testing.assert_close(values, logits[:, PROMPT - 1 : -1] * mask)


def test_gradient_accumulation_averages_the_micro_batch_token_means(accelerator, make_args):
    """Given the window's token count, each micro-batch's loss is its token sum over the window's count: two
    accumulated micro-batches equal one update on both together, whatever their token counts. Without it, each
    micro-batch's loss is its own token mean, divided by the accumulation divisor: equal with equal token counts,
    and with unequal counts each micro-batch gets the same weight, not each token."""
    args = make_args()

    def accumulated(batch, window=True):
        tokens = batch["completion_mask"].sum() if window else None
        critic = sgd_critic(accelerator, args)
        before = params(critic.model)
        first = critic.update(rows(batch, 0, 2), rows(batch, 0, 2)["completion_mask"], step=True, policy_lr=0.1,
                              sync_gradients=False, accumulation_steps=2, window_tokens=tokens)  # fmt: skip
        assert first.grad_norm is None and first.learning_rate is None  # no optimizer step inside the window
        assert not delta(params(critic.model), before).any()
        last = critic.update(rows(batch, 2, 4), rows(batch, 2, 4)["completion_mask"], step=True, policy_lr=0.1,
                             sync_gradients=True, accumulation_steps=2, window_tokens=tokens)  # fmt: skip
        assert last.grad_norm is not None and last.learning_rate == pytest.approx(0.1)
        return delta(params(critic.model), before)

    def at_once(batch):
        critic = sgd_critic(accelerator, args)
        before = params(critic.model)
        critic.update(batch, batch["completion_mask"], step=True, policy_lr=0.1)
        return delta(params(critic.model), before)

    equal = make_batch(
        4, seed=1, completion_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    )
    torch.testing.assert_close(accumulated(equal), at_once(equal))
    torch.testing.assert_close(accumulated(equal, window=False), at_once(equal))

    unequal = make_batch(
        4, seed=2, completion_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0]])
    )
    model = tiny_model(0)
    losses = []
    for part in (rows(unequal, 0, 2), rows(unequal, 2, 4)):
        ids = torch.cat([part["prompt_ids"], part["completion_ids"]], dim=1)
        attention = torch.cat([part["prompt_mask"], part["completion_mask"]], dim=1)
        values = critic_values(model, ids, attention, COMPLETION)
        losses.append(clipped_value_loss(values, part["old_values"], part["returns"], part["completion_mask"])[0])
    ((losses[0] + losses[1]) / 2).backward()
    expected = torch.cat([-0.1 * param.grad.reshape(-1) for _, param in sorted(model.named_parameters())])
    torch.testing.assert_close(accumulated(unequal, window=False), expected)
    assert not torch.allclose(accumulated(unequal, window=False), at_once(unequal), rtol=1e-3, atol=1e-6)
    torch.testing.assert_close(accumulated(unequal), at_once(unequal))  # normalised over the window


def test_clip_fraction_and_loss_by_hand(accelerator, make_args):
    """ε_v = 0.2. Per active token, with V the critic's value: V_old = V + 0.5 and R = V - 1 is clipped (V_clip =
    V + 0.3, (V_clip - R)² = 1.69 > 1); V_old = V + 0.5 and R = V + 1 is not ((V_clip - R)² = 0.49); V_old = V is
    never clipped. Two of the five active tokens are clipped; the inactive ones would be."""
    critic = sgd_critic(accelerator, make_args(value_clip=0.2))
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = make_batch(2, seed=3, completion_mask=mask)
    values = critic.values(batch)
    old_offset = torch.tensor([[0.5, 0.5, 0.0, 0.5], [0.5, 0.0, 0.5, 0.5]])
    return_offset = torch.tensor([[-1.0, 1.0, 1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    batch["old_values"], batch["returns"] = values + old_offset, values + return_offset
    before = params(critic.model)
    stats = critic.update(batch, mask, step=False)
    assert torch.equal(stats.clip_fraction, torch.tensor(2.0) / 5.0)
    torch.testing.assert_close(stats.loss, torch.tensor(0.5 * (2 * 1.69 + 3 * 1.0) / 5))
    assert stats.grad_norm is None and stats.skipped_steps is None and stats.learning_rate is None
    assert all(param.grad is None for param in critic.model.parameters())  # evaluation: no gradient, no step
    assert not delta(params(critic.model), before).any()
    # The logged loss is the loss the critic trains on (one process: the global mean is the local one).
    loss, _ = clipped_value_loss(values, batch["old_values"], batch["returns"], mask, clip_range=0.2)
    torch.testing.assert_close(stats.loss, loss)

    plain = sgd_critic(accelerator, make_args(value_clip=None))
    stats = plain.update(batch, mask, step=False)
    assert stats.clip_fraction.item() == 0.0
    torch.testing.assert_close(stats.loss, torch.tensor(0.5 * 5 * 1.0 / 5))


def test_learning_rate_follows_the_policy_schedule(accelerator, make_args):
    args = make_args(learning_rate=3e-3, critic_learning_rate=1e-3)
    critic = sgd_critic(accelerator, args)
    assert critic.learning_rate(3e-3) == pytest.approx(1e-3)
    assert critic.learning_rate(1.5e-3) == pytest.approx(5e-4)
    batch = make_batch(2)
    stats = critic.update(batch, batch["completion_mask"], step=True, policy_lr=1.5e-3)
    assert stats.learning_rate == pytest.approx(5e-4)
    assert [group["lr"] for group in critic.optimizer.param_groups] == [stats.learning_rate]
    assert set(stats.metrics()) == {
        "value/loss", "value/clip_fraction", "value/grad_norm", "value/learning_rate"
    }  # fmt: skip
    args.learning_rate = 0.0  # no policy learning rate to follow: the critic keeps its own
    assert critic.learning_rate(0.0) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="needs policy_lr"):
        critic.update(batch, batch["completion_mask"], step=True)


def test_gradient_clipping_bounds_the_step_and_logs_the_norm_before_clipping(accelerator, make_args):
    batch = make_batch(2, seed=4)
    free = sgd_critic(accelerator, make_args(critic_max_grad_norm=0.0))
    before = params(free.model)
    norm = free.update(batch, batch["completion_mask"], step=True, policy_lr=0.1).grad_norm
    free_step = delta(params(free.model), before)
    clipped = sgd_critic(accelerator, make_args(critic_max_grad_norm=float(norm) / 4))
    stats = clipped.update(batch, batch["completion_mask"], step=True, policy_lr=0.1)
    assert torch.equal(stats.grad_norm, norm)
    torch.testing.assert_close(delta(params(clipped.model), before), free_step / 4, rtol=1e-4, atol=1e-7)
    inherited = sgd_critic(accelerator, make_args(critic_max_grad_norm=None, max_grad_norm=0.5))
    assert inherited.max_grad_norm == 0.5


def test_a_non_finite_gradient_skips_the_step(accelerator, make_args):
    critic = sgd_critic(accelerator, make_args())
    batch = make_batch(2, seed=5)
    batch["returns"] = torch.full_like(batch["returns"], float("nan"))
    before = params(critic.model)
    stats = critic.update(batch, batch["completion_mask"], step=True, policy_lr=0.1)
    assert not torch.isfinite(stats.grad_norm) and stats.skipped_steps == 1.0
    assert stats.metrics()["value/skipped_steps"] == 1.0
    assert all(torch.equal(param, before[name]) for name, param in critic.model.named_parameters())
    assert all(param.grad is None for param in critic.model.parameters())


def test_save_and_load_round_trip_bit_exact(tmp_path, accelerator, make_args):
    args = make_args(learning_rate=1e-2, critic_learning_rate=1e-2)
    critic = Critic.build(tiny_model(0), accelerator, args)  # AdamW, as the trainer builds it
    assert isinstance(critic.optimizer, torch.optim.AdamW)
    for seed in (6, 7):
        batch = make_batch(2, seed=seed)
        critic.update(batch, batch["completion_mask"], step=True, policy_lr=1e-2)
    folder = tmp_path / "checkpoint-2"
    critic.save_pretrained(str(folder), should_save=True)
    critic.save_checkpoint(str(folder), should_save=True)
    assert sorted(path.name for path in (folder / "critic").iterdir()) == [
        "config.json", "model.safetensors", "optimizer.pt"
    ]  # fmt: skip
    assert critic.checkpoint_problems(str(folder)) == []
    reloaded = LlamaForTokenClassification.from_pretrained(folder / "critic")
    assert all(torch.equal(param, critic.state_dict()[name]) for name, param in reloaded.state_dict().items())

    restored = Critic.build(tiny_model(1), accelerator, args)
    restored.load_checkpoint(str(folder))
    for name, param in critic.model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[name], param), name
    state, restored_state = critic.optimizer.state_dict(), restored.optimizer.state_dict()
    assert state["param_groups"] == restored_state["param_groups"]
    for key, entry in state["state"].items():
        for field in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(restored_state["state"][key][field], entry[field]), (key, field)
    batch = make_batch(2, seed=8)  # and both continue identically
    for each in (critic, restored):
        each.update(batch, batch["completion_mask"], step=True, policy_lr=1e-2)
    assert all(torch.equal(restored.state_dict()[name], p) for name, p in critic.state_dict().items())


def test_checkpoint_problems_and_refusals(tmp_path, accelerator, make_args):
    critic = Critic.build(tiny_model(0), accelerator, make_args())
    empty = tmp_path / "checkpoint-1"
    empty.mkdir()
    assert critic.checkpoint_problems(str(empty)) == [
        "it has no critic/ folder, so it was not written by PPOMaxTrainer"
    ]  # fmt: skip
    (empty / "critic").mkdir()
    assert critic.checkpoint_problems(str(empty)) == [
        (
            "critic/ holds no critic weights (model.safetensors or model.safetensors.index.json or "
            "adapter_model.safetensors)"
        ),
        "critic/optimizer.pt (the critic's optimizer) is missing",
    ]
    with pytest.raises(checkpoints.CheckpointError, match="Cannot resume from .*critic's optimizer"):
        critic.load_checkpoint(str(empty))
    critic.save_pretrained(str(empty), should_save=True)
    (empty / "critic" / "optimizer.pt").write_bytes(b"not a torch file")
    with pytest.raises(checkpoints.CheckpointError, match="the critic in .* cannot be loaded"):
        critic.load_checkpoint(str(empty))
    nothing = tmp_path / "not-written"
    critic.save_pretrained(str(nothing), should_save=False)  # another process writes
    critic.save_checkpoint(str(nothing), should_save=False)
    assert not nothing.exists()


def test_build_takes_a_one_output_token_classifier_only(accelerator, make_args):
    model = tiny_model(0)
    critic = Critic.build(model, accelerator, make_args())
    assert critic.model is model and critic.wrapped is model and not critic.deepspeed
    assert {id(p) for group in critic.optimizer.param_groups for p in group["params"]} == {
        id(p) for p in model.parameters()
    }  # fmt: skip
    with pytest.raises(TypeError, match="ForTokenClassification"):
        Critic.build(tiny_model(0, LlamaForSequenceClassification), accelerator, make_args())


def test_stats_name_the_logged_metrics():
    stats = CriticStats(loss=torch.tensor(1.0), clip_fraction=torch.tensor(0.5), skipped_steps=1.0)
    assert list(stats.metrics()) == ["value/loss", "value/clip_fraction", "value/skipped_steps"]
