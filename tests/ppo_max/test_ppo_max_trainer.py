"""PPO-max on TRL's GRPOTrainer: defaults, the critic, GAE on a real rollout, warm-up, ptx, PEFT, refusals."""

import math

import pytest
import torch
import trl
from helpers import logged
from helpers import ppo_max_cpu_kwargs as cpu_kwargs
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from trl_basics import PPOMaxConfig, PPOMaxTrainer
from trl_basics.functional import clip_rewards, gae_advantages, kl_k1, normalize_rewards, outcome_token_rewards
from trl_basics.ppo_max import CODE_SETTINGS, PAPER_SETTINGS, critic_values


def make(config, model_dir, task, dataset, **kwargs):
    return PPOMaxTrainer(model=model_dir, reward_funcs=task.reward_func, args=config, train_dataset=dataset, **kwargs)


def params(module):
    return {name: param.detach().clone() for name, param in module.named_parameters()}


# --- defaults and configs -------------------------------------------------------------------------------------------


def test_defaults_are_ppo_max(tmp_path):
    config = PPOMaxConfig(**cpu_kwargs(tmp_path))
    assert (config.kl_coef, config.kl_estimator, config.kl_placement) == (0.05, "k1", "token_reward")
    assert (config.reward_norm, config.reward_clip, config.reward_scale) == ("running", 0.3, False)
    assert (config.advantage_estimator, config.gamma, config.gae_lambda) == ("gae", 1.0, 0.9)
    assert (config.value_clip, config.critic_init, config.max_grad_norm) == (0.2, "reward_model", 1.0)
    assert (config.epsilon, config.beta, config.scale_rewards) == (0.2, 0.0, "none")
    assert not config.whiten_advantages and config.advantage_clip is None and config.entropy_bonus_coef == 0.0
    assert PPOMaxConfig(output_dir=str(tmp_path), use_cpu=True).num_generations == 1


@pytest.mark.parametrize("settings", [PAPER_SETTINGS, CODE_SETTINGS], ids=["paper", "code"])
def test_paper_and_code_settings_make_valid_configs(settings, tmp_path):
    config = PPOMaxConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, **settings)
    for name, value in settings.items():
        assert getattr(config, name) == value, name
    assert config.generation_batch_size == 128  # 4 minibatches of 32 per generation round


def test_paper_settings_are_the_defaults_for_every_component(tmp_path):
    config = PPOMaxConfig(output_dir=str(tmp_path), use_cpu=True)
    for name in ("reward_norm", "reward_clip", "kl_coef", "gae_lambda", "critic_learning_rate", "critic_init",
                 "learning_rate", "max_grad_norm", "num_generations", "gamma", "epsilon", "value_clip"):  # fmt: skip
        assert getattr(config, name) == PAPER_SETTINGS[name], name


def test_plain_grpo_config_takes_our_defaults_but_keeps_user_values(tmp_path, tiny_model_dir, task, dataset):
    config_kwargs = {k: v for k, v in cpu_kwargs(tmp_path).items() if k != "critic_learning_rate"}
    config = trl.GRPOConfig(**{**config_kwargs, "num_generations": 2}, epsilon=0.1)
    trainer = make(config, tiny_model_dir, task, dataset)
    assert isinstance(trainer.args, PPOMaxConfig)
    assert trainer.args.epsilon == 0.1 and trainer.num_generations == 2  # the user's
    assert trainer.args.kl_coef == 0.05 and trainer.args.loss_type == "bnpo"  # ours where GRPO's were defaults
    assert trainer.ref_model is not None and trainer.beta == 0.0
    assert trainer.trick_pipeline.names == ["reward_norm", "reward_clip", "kl_shaping", "gae"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scale_rewards": "group"}, "scale_rewards='group' would have no effect"),
        ({"beta": 0.04}, "would both apply a KL penalty"),
        ({"critic_init": "sft"}, "critic_init='sft' is not a valid choice"),
        ({"collapse_alarm": "loud"}, "collapse_alarm='loud' is not a valid choice"),
        ({"value_clip": 0.0}, "value_clip=0.0 must be positive"),
        ({"critic_warmup_steps": -1}, "critic_warmup_steps=-1"),
        ({"ptx_coef": -0.1}, "ptx_coef=-0.1"),
        ({"loss_type": "vespo"}, "assume sequence-level advantages"),
        ({"multi_objective_aggregation": "normalize_then_sum"}, "sums the weighted rewards first"),
        ({"reward_scale": True}, "both rescale the reward"),  # PPO-max: normalization or scaling, never both
    ],
)
def test_bad_settings_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        PPOMaxConfig(**cpu_kwargs(tmp_path, **kwargs))


# --- the critic -----------------------------------------------------------------------------------------------------


def test_critic_from_reward_model_starts_as_the_reward_model(tmp_path, tiny_model_dir, reward_model_dir, dataset):
    """With a reward model as the reward, the critic loads it: same backbone, its score head as the value head, so
    the value at the last token equals the reward model's score."""
    config = PPOMaxConfig(**cpu_kwargs(tmp_path))
    trainer = PPOMaxTrainer(model=tiny_model_dir, reward_funcs=reward_model_dir, args=config, train_dataset=dataset)
    assert trainer.critic_init_source == "reward_model"
    reward_model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1).eval()
    critic = trainer.critic.model
    assert critic.score.bias is None
    torch.testing.assert_close(critic.score.weight, reward_model.score.weight)
    ids = AutoTokenizer.from_pretrained(reward_model_dir)("say : digits 1 2", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(critic(input_ids=ids).logits[0, -1, 0], reward_model(input_ids=ids).logits[0, 0])
    trainer.train()
    assert not torch.equal(critic.score.weight, reward_model.score.weight)  # and then it learns


def test_critic_from_policy_with_reward_functions(tmp_path, tiny_model_dir, task, dataset, caplog):
    """With only reward functions, critic_init='reward_model' falls back to the policy (with a warning)."""
    with caplog.at_level("WARNING"):
        trainer = make(PPOMaxConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset)
    assert trainer.critic_init_source == "policy"
    assert "every reward is a plain function" in caplog.text
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    critic = trainer.critic.model
    for name, param in policy.model.named_parameters():
        torch.testing.assert_close(critic.model.get_parameter(name), param, msg=name)
    explicit = make(PPOMaxConfig(**cpu_kwargs(tmp_path, critic_init="policy")), tiny_model_dir, task, dataset)
    assert explicit.critic_init_source == "policy"


def test_critic_values_read_the_state_before_each_token():
    """V for completion token t comes from position P+t-1, the same shift as the policy's log-probs."""

    class PositionCritic(torch.nn.Module):
        def forward(self, input_ids, attention_mask, use_cache=False):
            positions = torch.arange(input_ids.size(1), dtype=torch.float32).expand(input_ids.size(0), -1)
            return type("Out", (), {"logits": positions.unsqueeze(-1)})()

    ids = torch.zeros(3, 5 + 4, dtype=torch.long)  # prompt 5, completion 4
    values = critic_values(PositionCritic(), ids, torch.ones_like(ids), logits_to_keep=4, batch_size=2)
    torch.testing.assert_close(values, torch.tensor([[4.0, 5.0, 6.0, 7.0]]).expand(3, -1))


def test_critic_has_its_own_optimizer_and_learning_rate(tmp_path, tiny_model_dir, task, dataset):
    config = PPOMaxConfig(**cpu_kwargs(tmp_path, critic_learning_rate=1e-3, lr_scheduler_type="linear", max_steps=2))
    trainer = make(config, tiny_model_dir, task, dataset)
    critic = trainer.critic.model
    before_policy, before_critic = params(trainer.model), params(critic)
    trainer.train()
    assert all(not torch.equal(p, before_policy[n]) for n, p in trainer.model.named_parameters())
    assert all(not torch.equal(p, before_critic[n]) for n, p in critic.named_parameters())
    policy_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not policy_params & {id(p) for p in critic.parameters()}
    # The critic's LR follows the policy's schedule scaled to critic_learning_rate: 1e-3 then 1e-3 · 1/2.
    assert logged(trainer, "value/learning_rate") == pytest.approx([1e-3, 5e-4])
    assert logged(trainer, "learning_rate") == pytest.approx([3e-3, 1.5e-3])


# --- one generation round, recomputed by hand ------------------------------------------------------------------------


def test_gae_advantages_and_returns_follow_the_paper_on_a_real_rollout(tmp_path, tiny_model_dir, task, dataset):
    """Recompute PPO-max's advantages from the rollout: r̃ = clip((r - μ)/σ, ±δ) with running moments, token rewards
    1[t = last]·r̃ - η·k1_t, then GAE(γ = 1, λ) on the critic's old values."""
    config = PPOMaxConfig(**cpu_kwargs(tmp_path, per_device_train_batch_size=16))
    trainer = make(config, tiny_model_dir, task, dataset)
    seen = {}
    original_build = trainer.build_rollout

    def spy(out, recorded):
        seen["rollout"] = original_build(out, recorded)
        return seen["rollout"]

    trainer.build_rollout = spy
    trainer.model.train()
    with torch.no_grad():  # move the policy away from the reference so that the KL term is not zero
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(16)])
    rollout = seen["rollout"]
    mask = rollout.completion_mask.float()
    kl = kl_k1(rollout.logprobs, rollout.ref_logprobs) * mask
    assert kl.abs().sum() > 0
    rewards = rollout.rewards  # TRL's gathered rewards, before any transform
    assert torch.equal(rewards, trainer.scalar_rewards())
    shaped = clip_rewards(normalize_rewards(rewards, rewards.mean(), rewards.std()), 0.3)
    token_rewards = outcome_token_rewards(shaped, mask) - 0.05 * kl
    advantages, returns = gae_advantages(token_rewards, batch["old_values"], mask, gamma=1.0, lam=0.9)
    torch.testing.assert_close(batch["advantages"], advantages, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["returns"], returns, rtol=1e-5, atol=1e-5)
    # The old values are the critic's, at the state before each completion token, zero where masked.
    critic = trainer.critic.model
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    with torch.no_grad():
        logits = critic(input_ids=ids, attention_mask=attention).logits[..., 0]
    prompt_length = batch["prompt_ids"].size(1)
    expected = logits[:, prompt_length - 1 : -1] * mask
    torch.testing.assert_close(batch["old_values"], expected, rtol=1e-5, atol=1e-5)


# --- components on and off ------------------------------------------------------------------------------------------


def test_monitors_are_logged(tmp_path, tiny_model_dir, task, dataset):
    trainer = make(PPOMaxConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset)
    trainer.train()
    entry = trainer.state.log_history[0]
    for name in ("perplexity", "completions/mean_length", "tricks/kl_shaping/k1_sequence_mean", "reward",
                 "value/explained_variance", "value/clip_fraction", "value/loss", "value/grad_norm",
                 "clip_ratio/region_mean", "tricks/reward_norm/running_mean", "tricks/reward_clip/clip_fraction",
                 "returns/mean", "value/old_values/mean"):  # fmt: skip
        assert name in entry and math.isfinite(entry[name]), name
    assert "kl" not in entry  # GRPO's own KL term stays off


def test_every_component_switches_off(tmp_path, tiny_model_dir, task, dataset):
    config = PPOMaxConfig(
        **cpu_kwargs(tmp_path),
        kl_coef=None,
        reward_norm="none",
        reward_clip=None,
        value_clip=None,
        gae_lambda=1.0,
        critic_init="policy",
        max_grad_norm=0.0,
        collapse_alarm="off",
    )
    trainer = make(config, tiny_model_dir, task, dataset)
    assert trainer.trick_pipeline.names == ["gae"]
    assert trainer.ref_model is None and trainer.collapse_alarm is None
    trainer.train()
    assert logged(trainer, "value/clip_fraction") == [0.0, 0.0]
    assert "tricks/kl_shaping/coef" not in trainer.state.log_history[0]


def test_multiple_minibatches_and_epochs_clip_policy_and_values(tmp_path, tiny_model_dir, task, dataset):
    """PPO's inner loop: 2 minibatches per round and 2 epochs. From the second update on, ratios and values move
    away from the rollout's, so both clips can act; GRPO computes the old log-probs itself."""
    config = PPOMaxConfig(
        **cpu_kwargs(tmp_path, max_steps=4, learning_rate=3e-2, critic_learning_rate=3e-2),
        steps_per_generation=2,
        num_iterations=2,
    )
    trainer = make(config, tiny_model_dir, task, dataset)
    trainer.sampling_logprobs = lambda out: pytest.fail("GRPO already computed old log-probs off-policy")
    trainer.train()
    assert len(logged(trainer, "value/explained_variance")) == 1  # one generation round for 4 updates
    assert max(logged(trainer, "value/clip_fraction")) > 0
    assert max(logged(trainer, "clip_ratio/region_mean")) > 0


def test_entropy_bonus(tmp_path, tiny_model_dir, task, dataset):
    trainer = make(PPOMaxConfig(**cpu_kwargs(tmp_path), entropy_bonus_coef=0.01), tiny_model_dir, task, dataset)
    trainer.train()
    assert len(logged(trainer, "tricks/entropy_bonus/loss")) == 2


def test_critic_warmup_freezes_the_actor(tmp_path, tiny_model_dir, task, dataset):
    config = PPOMaxConfig(**cpu_kwargs(tmp_path, max_steps=3), critic_warmup_steps=2)
    trainer = make(config, tiny_model_dir, task, dataset)
    critic = trainer.critic.model
    start_policy, start_critic = params(trainer.model), params(critic)
    snapshots = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            snapshots.append((params(trainer.model), params(critic)))

    trainer.add_callback(Snapshot())
    trainer.train()
    (policy_1, critic_1), (policy_2, critic_2), (policy_3, _) = snapshots
    for name, value in start_policy.items():
        assert torch.equal(policy_1[name], value) and torch.equal(policy_2[name], value), name
    assert any(not torch.equal(policy_3[n], v) for n, v in start_policy.items())  # step 3: the actor moves
    assert any(not torch.equal(critic_1[n], v) for n, v in start_critic.items())
    assert any(not torch.equal(critic_2[n], critic_1[n]) for n in start_critic)
    assert not trainer.optimizer.state or all(  # AdamW saw no gradient during warm-up
        state["step"] == 1 for state in trainer.optimizer.state.values()
    )


def test_ptx_adds_the_pretraining_nll(tmp_path, tiny_model_dir, task, dataset):
    texts = [f"say : {word} {word} {word}" for word in "abcdefgh"]
    config = PPOMaxConfig(**cpu_kwargs(tmp_path), ptx_coef=0.5, ptx_batch_size=4)
    trainer = make(config, tiny_model_dir, task, dataset, ptx_dataset=texts)
    trainer.model.train()
    drawn = trainer._ptx_batch()
    assert len(drawn) == 4 and set(drawn) <= set(texts)
    assert trainer._ptx_batch() == drawn  # a function of (step, micro-step, rank): resuming draws the same
    with torch.no_grad():
        nll = trainer._ptx_loss(trainer.model)
    tokenizer = trainer.processing_class
    manual = []
    for text in drawn:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            manual.append((trainer.model(input_ids=ids, labels=ids).loss, ids.size(1) - 1))
    expected = sum(loss * n for loss, n in manual) / sum(n for _, n in manual)  # token mean over the batch
    torch.testing.assert_close(nll, expected, rtol=1e-4, atol=1e-4)
    trainer.train()
    assert len(logged(trainer, "ptx/loss")) == 2


def test_ptx_needs_both_coefficient_and_texts(tmp_path, tiny_model_dir, task, dataset):
    with pytest.raises(ValueError, match="needs plain texts"):
        make(PPOMaxConfig(**cpu_kwargs(tmp_path), ptx_coef=0.1), tiny_model_dir, task, dataset)
    with pytest.raises(ValueError, match="ptx_coef is 0"):
        make(PPOMaxConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset, ptx_dataset=["a b"])


def test_critic_with_a_peft_adapter(tmp_path, tiny_model_dir, task, dataset):
    from peft import LoraConfig

    config = PPOMaxConfig(**cpu_kwargs(tmp_path, max_steps=2, save_strategy="steps", save_steps=1))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = make(config, tiny_model_dir, task, dataset, critic_peft_config=lora)
    critic = trainer.critic.model
    trainable = {name for name, param in critic.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or "score" in name for name in trainable)
    assert any("score" in name for name in trainable)  # the value head learns in full
    before = params(critic)
    trainer.train()
    after = params(critic)
    assert any(not torch.equal(after[n], before[n]) for n in trainable)
    assert all(torch.equal(after[n], before[n]) for n in before if n not in trainable)
    # A fresh trainer resumed from the first checkpoint gets the adapter and the head back.
    resumed = make(
        PPOMaxConfig(**cpu_kwargs(tmp_path / "resumed", max_steps=2)), tiny_model_dir, task, dataset,
        critic_peft_config=lora,
    )  # fmt: skip
    assert (tmp_path / "checkpoint-2" / "critic" / "adapter_model.safetensors").exists()
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))  # at max_steps already: loads, no step
    for name, param in resumed.critic.model.named_parameters():
        torch.testing.assert_close(param, after[name], msg=name)


def test_non_finite_critic_gradient_skips_the_critic_step(tmp_path, tiny_model_dir, task, dataset):
    trainer = make(PPOMaxConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset)
    trainer.model.train()
    batch = trainer._generate_and_score_completions([dataset[i] for i in range(8)])
    batch["returns"] = torch.full_like(batch["returns"], float("nan"))  # a poisoned target
    trainer.current_gradient_accumulation_steps = 1
    critic = trainer.critic.model
    before = params(critic)
    trainer._critic_update(batch, step=True)
    assert all(torch.equal(p, before[n]) for n, p in critic.named_parameters())
    assert trainer._metrics["train"]["value/skipped_steps"] == [1.0]
    assert all(p.grad is None for p in critic.parameters())


def test_critic_model_argument_takes_a_path_or_a_token_classifier(tmp_path, tiny_model_dir, reward_model_dir, task,
                                                                  dataset):  # fmt: skip
    from trl_basics.ppo_max import load_value_model

    ready = load_value_model(reward_model_dir)
    trainer = make(PPOMaxConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset, critic_model=ready)
    assert trainer.critic_init_source == "given" and trainer.critic.model is ready
    by_path = make(
        PPOMaxConfig(**cpu_kwargs(tmp_path), critic_model_path=reward_model_dir), tiny_model_dir, task, dataset
    )
    torch.testing.assert_close(by_path.critic.model.score.weight, ready.score.weight)
    sequence_classifier = AutoModelForSequenceClassification.from_pretrained(reward_model_dir, num_labels=1)
    with pytest.raises(TypeError, match="ForTokenClassification"):
        make(PPOMaxConfig(**cpu_kwargs(tmp_path)), tiny_model_dir, task, dataset, critic_model=sequence_classifier)


def test_critic_from_an_unsaved_policy_copies_its_backbone(tmp_path, task, dataset):
    """A policy object that was never saved (no path to reload; KL off, so no reference model either)."""
    from trl_basics.kit.model import build_tiny_model
    from trl_basics.kit.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    policy = build_tiny_model(tokenizer, seed=3)
    config = PPOMaxConfig(**cpu_kwargs(tmp_path), kl_coef=None, critic_init="policy")
    trainer = PPOMaxTrainer(
        model=policy, reward_funcs=task.reward_func, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    critic = trainer.critic.model
    for name, param in policy.model.named_parameters():
        torch.testing.assert_close(critic.model.get_parameter(name), param, msg=name)
    trainer.train()


def test_a_critic_for_an_architecture_without_a_value_head_class_is_refused_with_the_way_out(tmp_path):
    """A vision-language config has no AutoModelForTokenClassification: the critic cannot be built, and the message
    says why and what to pass instead, rather than transformers' bare 'Unrecognized configuration class'."""
    from transformers import LlamaConfig, LlavaConfig

    from trl_basics.ppo_max.critic import check_critic_architecture, load_value_model

    with pytest.raises(ValueError, match="LlavaConfig") as refusal:
        check_critic_architecture(LlavaConfig())
    assert "critic_model" in str(refusal.value) and "critic-free" in str(refusal.value)
    LlavaConfig().save_pretrained(tmp_path / "vlm")
    with pytest.raises(ValueError, match="AutoModelForTokenClassification"):
        load_value_model(str(tmp_path / "vlm"))
    check_critic_architecture(LlamaConfig())  # a text model is fine
