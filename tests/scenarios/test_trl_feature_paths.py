"""TRL's own trainer-test scenarios, run with every trl_basics trainer they apply to, with and without tricks.

The scenarios come from TRL's ``tests/test_rloo_trainer.py`` and ``tests/test_grpo_trainer.py``. The ones the kit
can serve on CPU run here, each with two settings: the trainer's defaults (for ``RLOOTrainer`` that is TRL's own RLOO,
for the others their presets) and a representative trick set (running reward normalization and clipping, k2 KL in
the loss, global whitening, advantage clipping, an entropy bonus). Every case trains one step on a tiny model and
checks what the feature promises: parameters moved (or, with every completion truncated and masked, did not), the
loss is finite, and the metrics the feature and the tricks log are there, in training and in evaluation.

Tools and ``environment_factory`` run on the GRPO-based trainers (REINFORCE++ with either baseline, PPO-max, and the
RLOO family on the GRPO base) with the kit's byte-level tokenizer, which uses TRL's own Qwen 2.5 chat template, so TRL
parses the tool calls; TRL's RLOOTrainer has no tool loop. ``tests/scenarios/test_trl_tool_tests.py`` holds TRL's own
tool tests with these trainers, compared with ``trl.GRPOTrainer``.

TRL scenarios not run here, and why:
- vLLM generation and its importance-sampling correction: the vLLM column of this matrix is
  ``tests/with_vllm/test_vllm_generation.py`` (every trainer here, with the defaults and the trick set, colocated and
  against ``trl vllm-serve``, with LoRA), which trains in the separate ``.venv-vllm`` environment. vLLM's structured
  outputs, Liger kernels, continuous batching: not installed or GPU-only.
- PPO-max with a vision-language model: its critic is an ``AutoModelForTokenClassification``, which has no
  vision-language class; the trainer refuses it with the way out (``tests/ppo_max/test_ppo_max_trainer.py``).
- GRPO's per-group reward scaling (``scale_rewards="group"``) on REINFORCE++: refused on purpose (tested below).
- hub-specific cases (``trust_remote_code``, reward models by hub id, iterable datasets and dataloader workers, the
  entropy-mask and off-policy-mask unit tests of TRL's helpers): they test TRL itself, not a path a subclass changes.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from helpers import cpu_kwargs, logged

from trl_basics import (
    PPOMaxConfig,
    PPOMaxTrainer,
    ReinforcePlusPlusConfig,
    ReinforcePlusPlusTrainer,
    ReinforceWithBaselineConfig,
    ReinforceWithBaselineTrainer,
    RLOOConfig,
    RLOOTrainer,
)

# trainer id -> (trainer class, config class, fixed config fields)
TRAINERS = {
    "rloo": (RLOOTrainer, RLOOConfig, {}),
    "reinforce_ma": (ReinforceWithBaselineTrainer, ReinforceWithBaselineConfig, {}),
    "reinforce_pp": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "none"}),
    "reinforce_pp_baseline": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, {"baseline": "group"}),
    "ppo_max": (PPOMaxTrainer, PPOMaxConfig, {"critic_init": "policy", "critic_learning_rate": 3e-3}),
}
GRPO_BASED = ("reinforce_pp", "reinforce_pp_baseline", "ppo_max")
RLOO_BASED = ("rloo", "reinforce_ma")

TRICK_SET = {
    "reward_norm": "running",
    "reward_clip": 3.0,
    "kl_coef": 0.1,
    "kl_estimator": "k2",
    "kl_placement": "loss",
    "whiten_advantages": True,
    "advantage_clip": 3.0,
    "entropy_bonus_coef": 0.01,
}
# Metrics the trick set logs in training (the KL-in-loss term also in evaluation).
TRICK_TRAIN_KEYS = (
    "tricks/reward_norm/running_std",
    "tricks/reward_clip/clip_fraction",
    "tricks/kl_shaping/coef",
    "tricks/kl_shaping/k2_sequence_mean",
    "tricks/kl_shaping/loss",
    "tricks/advantage_clip/clip_fraction",
    "tricks/entropy_bonus/loss",
    "advantages/mean",
)
KL_LOSS_KEY = "tricks/kl_shaping/loss"
SETTINGS = ("defaults", "tricks")
MATRIX = [(t, s) for t in TRAINERS for s in SETTINGS]
MATRIX_IDS = [f"{t}-{s}" for t, s in MATRIX]


def make_config(trainer_id, setting, output_dir, **overrides):
    _, config_cls, fixed = TRAINERS[trainer_id]
    fields = dict(fixed)
    if setting == "tricks":
        fields.update(TRICK_SET)
        if trainer_id in RLOO_BASED:
            fields["beta"] = 0.0  # kl_coef replaces TRL's beta
    kwargs = cpu_kwargs(output_dir, max_steps=1, per_device_train_batch_size=8, num_generations=4)
    kwargs.update(fields)
    kwargs.update(overrides)
    return config_cls(**kwargs)


def make_trainer(trainer_id, setting, output_dir, model, task, dataset, config_overrides=None, **trainer_kwargs):
    trainer_cls = TRAINERS[trainer_id][0]
    config = make_config(trainer_id, setting, output_dir, **(config_overrides or {}))
    return trainer_cls(
        model=model, reward_funcs=task.reward_func, args=config, train_dataset=dataset, **trainer_kwargs
    )


def snapshot(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def assert_all_changed(trainer, before):
    assert before, "no trainable parameter"
    for name, value in before.items():
        assert not torch.equal(value, trainer.model.get_parameter(name)), f"{name} did not change"


def train_log(trainer):
    """The merged per-step training logs (not the final summary)."""
    merged = {}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            merged.update(entry)
    return merged


def assert_trained(trainer, setting, before):
    logs = train_log(trainer)
    assert math.isfinite(logs["loss"]), logs["loss"]
    assert_all_changed(trainer, before)
    if setting == "tricks":
        missing = [key for key in TRICK_TRAIN_KEYS if key not in logs]
        assert not missing, f"trick metrics not logged: {missing}"
        assert logs[KL_LOSS_KEY] >= 0.0  # k2 is a square
    return logs


# --- eval during training, eval_on_start, evaluate() ------------------------------------------------------------------


@pytest.mark.parametrize(("trainer_id", "setting"), MATRIX, ids=MATRIX_IDS)
def test_eval_during_training(trainer_id, setting, tmp_path, tiny_model_dir, task, dataset):
    """TRL test_train_with_eval / test_train_eval_on_start: eval before the first step and after it.

    With the KL in the loss, the evaluation loss holds the KL term too: exactly zero before any update (policy and
    reference are the same weights) and positive after one.
    """
    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        tiny_model_dir,
        task,
        dataset,
        config_overrides={
            "eval_strategy": "steps",
            "eval_steps": 1,
            "eval_on_start": True,
            "per_device_eval_batch_size": 8,
        },
        eval_dataset=task.make_dataset(8, seed=1),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, setting, before)
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [0, 1]
    for entry in evals:
        assert math.isfinite(entry["eval_loss"]) and "eval_reward" in entry and "eval_perplexity" in entry
    if setting == "tricks":
        assert abs(evals[0][f"eval_{KL_LOSS_KEY}"]) < 1e-7
        assert evals[1][f"eval_{KL_LOSS_KEY}"] > 1e-6


@pytest.mark.parametrize(("trainer_id", "setting"), MATRIX, ids=MATRIX_IDS)
def test_evaluate(trainer_id, setting, tmp_path, tiny_model_dir, task, dataset):
    """TRL test_evaluate_with_eval_dataset: ``evaluate()`` on a dict of eval datasets, before any training."""
    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        tiny_model_dir,
        task,
        dataset,
        config_overrides={"per_device_eval_batch_size": 8},
        eval_dataset={"a": task.make_dataset(8, seed=1), "b": task.make_dataset(8, seed=2)},
    )
    metrics = trainer.evaluate()
    assert trainer.state.global_step == 0
    for name in ("a", "b"):
        assert math.isfinite(metrics[f"eval_{name}_loss"])
        # TRL logs its generation metrics once per eval dataset, next to that dataset's loss.
        (entry,) = [e for e in trainer.state.log_history if f"eval_{name}_loss" in e]
        assert "eval_reward" in entry and "eval_entropy" in entry
        if setting == "tricks":
            assert abs(entry[f"eval_{KL_LOSS_KEY}"]) < 1e-7  # no update yet: policy == reference


# --- data formats -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("trainer_id", "setting"), MATRIX, ids=MATRIX_IDS)
def test_conversational_prompts(trainer_id, setting, tmp_path, tiny_model_dir, task):
    """TRL test_train_dataset_format / test_train_reward_func_conversational: chat-formatted prompts."""
    data = task.make_dataset(16, seed=0, conversational=True)
    seen = []

    def reward(prompts, completions, **kwargs):
        seen.append((prompts[0], completions[0]))
        return task.reward_func(prompts, completions, **kwargs)

    trainer_cls = TRAINERS[trainer_id][0]
    trainer = trainer_cls(
        model=tiny_model_dir, reward_funcs=reward, args=make_config(trainer_id, setting, tmp_path), train_dataset=data
    )
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, setting, before)
    prompt, completion = seen[0]
    assert isinstance(prompt, list) and prompt[0]["role"] == "user"
    assert isinstance(completion, list) and completion[0]["role"] == "assistant"


# --- models: MoE, PEFT ------------------------------------------------------------------------------------------------

# RLOO's token-level loss (per-token KL in the reward) is its own code path: it must add and log the router loss too.
MOE_CASES = [*MATRIX, ("rloo", "token_kl"), ("reinforce_ma", "token_kl")]
TOKEN_KL = {"beta": 0.0, "kl_coef": 0.1, "kl_placement": "token_reward"}


@pytest.mark.parametrize(("trainer_id", "setting"), MOE_CASES, ids=[f"{t}-{s}" for t, s in MOE_CASES])
def test_moe_model(trainer_id, setting, tmp_path, moe_model_dir, kit_tokenizer, task, dataset):
    """TRL test_train with a Mixture-of-Experts model: the load-balancing loss is added and logged as ``aux_loss``."""
    overrides = TOKEN_KL if setting == "token_kl" else {}
    trainer = make_trainer(
        trainer_id,
        "defaults" if setting == "token_kl" else setting,
        tmp_path,
        moe_model_dir,
        task,
        dataset,
        config_overrides=overrides,
        processing_class=kit_tokenizer,
    )
    assert trainer.aux_loss_enabled
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, "defaults" if setting == "token_kl" else setting, before)
    if setting == "token_kl":
        assert trainer.trick_pipeline.names[:2] == ["kl_shaping", "rloo" if trainer_id == "rloo" else "moving_average"]
    aux = logged(trainer, "aux_loss")
    assert len(aux) == 1 and math.isfinite(aux[0]) and aux[0] > 0.0


@pytest.mark.parametrize(("trainer_id", "setting"), MATRIX, ids=MATRIX_IDS)
def test_peft_lora(trainer_id, setting, tmp_path, tiny_model_dir, task, dataset):
    """TRL test_train_peft_config: only the adapter trains; the reference is the base model with the adapter off."""
    from peft import LoraConfig

    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        tiny_model_dir,
        task,
        dataset,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        eval_dataset=task.make_dataset(8, seed=1),
    )
    assert trainer.ref_model is None
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    before = snapshot(trainer)
    assert before and all("lora_" in name for name in before)
    trainer.train()
    # One step from B = 0: only lora_B has a gradient yet (A's is proportional to B).
    assert_trained(trainer, setting, {n: p for n, p in before.items() if "lora_B" in n})
    for name, value in base.items():
        assert torch.equal(value, trainer.model.get_parameter(name)), f"base parameter {name} changed"
    if setting == "tricks":
        # Evaluation's KL term reads the reference through the disabled adapter: positive once the adapter moved.
        assert trainer.evaluate()[f"eval_{KL_LOSS_KEY}"] > 1e-9


VLM_CASES = [(t, s) for t, s in MATRIX if t != "ppo_max"]


@pytest.mark.parametrize(("trainer_id", "setting"), VLM_CASES, ids=[f"{t}-{s}" for t, s in VLM_CASES])
def test_vision_language_model(trainer_id, setting, tmp_path, vlm_model_dir, image_dataset, task):
    """TRL test_train_vlm: image + text prompts; pixel values reach every forward (policy, reference, evaluation)."""
    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        vlm_model_dir,
        task,
        image_dataset,
        config_overrides={"per_device_eval_batch_size": 8},
        eval_dataset=image_dataset.select(range(8)),
    )
    before = snapshot(trainer)
    # The vision features are read before CLIP's final layer norm, so that norm never gets a gradient.
    before = {n: p for n, p in before.items() if "post_layernorm" not in n}
    assert any("vision_tower" in n for n in before) and any("multi_modal_projector" in n for n in before)
    trainer.train()
    assert_trained(trainer, setting, before)  # the image path reached the gradient: tower and projector moved
    metrics = trainer.evaluate()
    assert math.isfinite(metrics["eval_loss"])
    if setting == "tricks":
        assert metrics[f"eval_{KL_LOSS_KEY}"] > 1e-9


# --- reference model sync, truncated completions ----------------------------------------------------------------------


@pytest.mark.parametrize(("trainer_id", "setting"), MATRIX, ids=MATRIX_IDS)
def test_sync_ref_model(trainer_id, setting, tmp_path, tiny_model_dir, task, dataset):
    """TRL test_train_with_sync_ref_model: the reference model is mixed towards the policy after every step."""
    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        tiny_model_dir,
        task,
        dataset,
        config_overrides={"sync_ref_model": True, "ref_model_sync_steps": 1, "ref_model_mixup_alpha": 0.5},
    )
    assert trainer.ref_model is not None
    ref_before = {n: p.detach().clone() for n, p in trainer.ref_model.named_parameters()}
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, setting, before)
    ref_after = dict(trainer.ref_model.named_parameters())
    policy = dict(trainer.model.named_parameters())
    for name, value in ref_before.items():
        # ref ← α·policy + (1-α)·ref with α = 0.5
        torch.testing.assert_close(ref_after[name], 0.5 * policy[name] + 0.5 * value, msg=name)
        assert not torch.equal(ref_after[name], value), name


@pytest.mark.parametrize(("trainer_id", "setting"), MATRIX, ids=MATRIX_IDS)
def test_mask_truncated_completions_all_masked(
    trainer_id, setting, tmp_path, tiny_model_dir, kit_tokenizer, task, dataset
):
    """TRL test_train_with_mask_truncated_completions_all_masked: no completion ends, so none may move the policy.

    EOS and pad are suppressed in sampling, so every completion hits ``max_completion_length`` and is masked out; with
    every trick on, no loss term (KL, entropy bonus) may leak a gradient through the masked tokens.
    """
    suppress = [kit_tokenizer.eos_token_id, kit_tokenizer.pad_token_id]
    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        tiny_model_dir,
        task,
        dataset,
        config_overrides={"mask_truncated_completions": True, "generation_kwargs": {"suppress_tokens": suppress}},
    )
    before = snapshot(trainer)
    trainer.train()
    logs = train_log(trainer)
    assert logs["completions/clipped_ratio"] == 1.0
    assert logs["grad_norm"] == 0.0 and abs(logs["loss"]) < 1e-6
    for name, value in before.items():
        assert torch.equal(value, trainer.model.get_parameter(name)), f"{name} changed"
    if setting == "tricks":
        assert logs[KL_LOSS_KEY] == 0.0


# --- every GRPO loss_type -----------------------------------------------------------------------------------------

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo")
LOSS_CASES = [(t, loss) for t in ("reinforce_pp_baseline", "ppo_max") for loss in LOSS_TYPES]


@pytest.mark.parametrize(("trainer_id", "loss_type"), LOSS_CASES, ids=[f"{t}-{loss}" for t, loss in LOSS_CASES])
def test_loss_type(trainer_id, loss_type, tmp_path, tiny_model_dir, task, dataset):
    """TRL test_train_loss_types, with the trick set on: token-level advantages under every aggregation."""
    trainer = make_trainer(
        trainer_id, "tricks", tmp_path, tiny_model_dir, task, dataset, config_overrides={"loss_type": loss_type}
    )
    assert trainer.loss_type == loss_type
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, "tricks", before)


# --- GRPO options on REINFORCE++ ----------------------------------------------------------------------------------

# GRPO options a plain GRPO pipeline may carry into REINFORCE++: TRL's KL coefficient, batch reward scaling, GDPO's
# per-function normalization, the vespo loss and the off-policy mask. Each is translated or works as it does in GRPO
# (docs/reinforce_pp.md); every case runs with and without the trick set.
GRPO_OPTIONS = {
    "beta": {"beta": 0.04, "kl_coef": None},
    "scale_rewards_batch": {"scale_rewards": "batch"},
    "normalize_then_sum": {"multi_objective_aggregation": "normalize_then_sum"},
    "vespo": {"loss_type": "vespo"},
    # Off-policy from the second step on: two optimisation passes over each generation round.
    "off_policy_mask": {"off_policy_mask_threshold": 0.5, "num_iterations": 2, "max_steps": 2},
}
GRPO_OPTION_CASES = [
    (trainer_id, setting, option)
    for trainer_id in ("reinforce_pp", "reinforce_pp_baseline")
    for setting in SETTINGS
    for option in GRPO_OPTIONS
]


@pytest.mark.parametrize(
    ("trainer_id", "setting", "option"), GRPO_OPTION_CASES, ids=["-".join(case) for case in GRPO_OPTION_CASES]
)
def test_grpo_option_on_reinforce_pp(trainer_id, setting, option, tmp_path, tiny_model_dir, task, dataset):
    """TRL's GRPO option tests (test_train_beta_non_zero, test_train_scale_rewards, ...) with REINFORCE++."""
    overrides = dict(GRPO_OPTIONS[option])  # with the trick set, beta stands in for its kl_coef
    trainer = make_trainer(
        trainer_id,
        setting,
        tmp_path,
        tiny_model_dir,
        task,
        dataset,
        config_overrides=overrides,
        eval_dataset=task.make_dataset(8, seed=1),
    )
    before = snapshot(trainer)
    trainer.train()
    assert_trained(trainer, setting, before)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


@pytest.mark.parametrize("baseline", ["none", "group"])
def test_group_reward_scaling_is_refused_on_reinforce_pp(baseline, tmp_path):
    """scale_rewards='group' is GRPO's per-group std normalization, which REINFORCE++ replaces: refused, saying so."""
    with pytest.raises(ValueError, match="scale_rewards") as err:
        ReinforcePlusPlusConfig(output_dir=str(tmp_path), use_cpu=True, baseline=baseline, scale_rewards="group")
    assert "whiten" in str(err.value) or "REINFORCE++" in str(err.value)


# --- tools and environment_factory (TRL's multi-turn tool loop) ---------------------------------------------------------

# The GRPO-based trainers inherit TRL's tool loop: REINFORCE++ (both baselines), PPO-max, and the RLOO family run on
# the GRPO base (tests/rloo/test_rloo_family_grpo.py).
RLOO_ON_GRPO = {"advantage_estimator": "rloo", "whiten_advantages": False, "loss_type": "luspo"}
TOOL_TRAINERS = {
    **{t: TRAINERS[t] for t in GRPO_BASED},
    "rloo_grpo": (ReinforcePlusPlusTrainer, ReinforcePlusPlusConfig, RLOO_ON_GRPO),
    "reinforce_ma_grpo": (
        ReinforcePlusPlusTrainer,
        ReinforcePlusPlusConfig,
        {**RLOO_ON_GRPO, "advantage_estimator": "moving_average"},
    ),
}
TOOL_MATRIX = [(t, s) for t in TOOL_TRAINERS for s in SETTINGS]
# Room for the opening call (about 30 tokens), the tool output and a few tokens of the next turn.
TOOL_OVERRIDES = {
    "per_device_train_batch_size": 4,
    "num_generations": 2,
    "max_completion_length": 64,
    "max_tool_calling_iterations": 1,
}


def make_tool_trainer(trainer_id, setting, output_dir, model_dir, column, task, tool_calls):
    """A one-step trainer on ``task`` through the ``tools`` or ``environment_factory`` entry point.

    Every other rollout opens with the task's call (``opening_call_rollout``); TRL runs the tool and the model
    writes what follows. ``tool_calls`` records each call the tool (or environment) actually served.
    """
    from trl_basics.kit.tool_rollout import opening_call_rollout
    from trl_basics.kit.tool_tasks import tool_call_reward

    trainer_cls, config_cls, fixed = TOOL_TRAINERS[trainer_id]
    fields = {**fixed, **(TRICK_SET if setting == "tricks" else {})}
    config = config_cls(**cpu_kwargs(output_dir, max_steps=1, **{**TOOL_OVERRIDES, **fields}))
    if column == "tools":

        @functools.wraps(task.tools[0])
        def tool(*args, **kwargs):
            tool_calls.append(kwargs)
            return task.tools[0](*args, **kwargs)

        entry = {"tools": [tool]}
    else:

        class RecordingEnvironment(task.environment_factory):
            def guess(self, number: int) -> str:
                """Guess the secret number.

                Args:
                    number: The guess.
                """
                tool_calls.append({"number": number})
                return super().guess(number)

        entry = {"environment_factory": RecordingEnvironment}
    return trainer_cls(
        model=model_dir,
        reward_funcs=[task.reward_func, tool_call_reward],
        args=config,
        train_dataset=task.make_dataset(8, seed=0),
        rollout_func=opening_call_rollout(task),
        **entry,
    )


def spy_build_rollout(trainer):
    seen = []
    original = trainer.build_rollout

    def spy(out, passes):
        rollout = original(out, passes)
        seen.append((out, rollout))
        return rollout

    trainer.build_rollout = spy
    return seen


@pytest.mark.parametrize("column", ["tools", "environment_factory"])
@pytest.mark.parametrize(("trainer_id", "setting"), TOOL_MATRIX, ids=[f"{t}-{s}" for t, s in TOOL_MATRIX])
def test_tool_calls(column, trainer_id, setting, tmp_path, byte_model_dir, monkeypatch):
    """TRL test_train_with_tools / test_train_with_environment_factory: a real tool call in the rollouts, its output
    masked out of the policy's tokens (``tool_mask`` 0 = our completion mask 0, advantage 0 there), one step trains.

    ``tools``: the kit's multiply tool (``MULTIPLY_TOOL_TASK``). ``environment_factory``: the guess-the-number
    environment (``GUESS_NUMBER_TASK``), whose reward reads the environment's state after the rollout.
    """
    from trl_basics.kit.tool_tasks import GUESS_NUMBER_TASK, MULTIPLY_TOOL_TASK

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    task = MULTIPLY_TOOL_TASK if column == "tools" else GUESS_NUMBER_TASK
    tool_calls = []
    trainer = make_tool_trainer(trainer_id, setting, tmp_path, byte_model_dir, column, task, tool_calls)
    seen = spy_build_rollout(trainer)
    before = snapshot(trainer)
    trainer.train()

    assert tool_calls, "the tool was never called"
    out, rollout = seen[0]
    completion_mask, tool_mask = out["completion_mask"], out["tool_mask"]
    holes = completion_mask.bool() & ~tool_mask.bool()
    assert holes.any(), "no tool output inside a completion"
    # The tokens the policy chose are exactly the completion tokens outside the tool outputs.
    assert torch.equal(rollout.completion_mask.bool(), completion_mask.bool() & tool_mask.bool())
    advantages = out["advantages"]  # what the pipeline wrote into TRL's batch
    if advantages.dim() == 2:  # per-token advantages: none on a tool-output token
        assert advantages[holes].abs().sum() == 0
        assert advantages[rollout.completion_mask.bool()].abs().sum() > 0
    if "returns" in out:  # PPO-max: no value target on a tool-output token
        assert out["returns"][holes].abs().sum() == 0
    logs = assert_trained(trainer, setting, before)
    assert logs["tools/call_frequency"] > 0
    if column == "environment_factory":
        assert any(env.guesses for env in trainer.environments)
