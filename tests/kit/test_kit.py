"""Tests of the tiny-model kit: tokenizer, tiny models, synthetic tasks and a TRL smoke run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaForCausalLM,
)

from trl_basics.kit import (
    DEFAULT_VOCAB,
    EXACT_LENGTH,
    TARGET_LETTER,
    TASKS,
    TOKEN_KIND,
    build_tiny_model,
    build_tiny_value_model,
    build_tokenizer,
    exact_length_reward,
    get_task,
    limit_torch_threads,
    load_tiny_model,
    recommended_rl_kwargs,
    save_tiny_model,
    save_tiny_reward_model,
    split_words,
    target_letter_reward,
    token_kind_reward,
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM and its tokenizer saved once for the module."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


# ------------------------------------------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trip_after_save(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer("Say: c, 12 letters!").input_ids
    assert ids, "a reloaded tokenizer must not return empty ids (the Qwen2Tokenizer pitfall)"
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == "say : c , 1 2 letters !"
    assert tokenizer.decode(tokenizer("say : a b").input_ids) == "say : a b"
    assert tokenizer("hello").input_ids == [tokenizer.unk_token_id]
    assert tokenizer.padding_side == "left"
    assert (tokenizer.pad_token, tokenizer.unk_token, tokenizer.bos_token, tokenizer.eos_token) == (
        "<pad>",
        "<unk>",
        "<bos>",
        "<eos>",
    )
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert len(tokenizer) == len(build_tokenizer())


def test_tokenizer_left_padding_and_special_tokens() -> None:
    tokenizer = build_tokenizer()
    batch = tokenizer(["a b c", "d"], padding=True)
    assert batch.input_ids[1][:2] == [tokenizer.pad_token_id] * 2
    assert batch.attention_mask[1] == [0, 0, 1]
    ids = tokenizer("a").input_ids + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a"


def test_chat_template_applies_after_save(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "say : c"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<bos><|user|> say : c<|assistant|> "
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<bos>", "<|user|>", "say", ":", "c", "<|assistant|>"]

    full = messages + [{"role": "assistant", "content": "c c"}]
    out = tokenizer.apply_chat_template(full, return_dict=True, return_assistant_tokens_mask=True)
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"])
    assert tokens[-3:] == ["c", "c", "<eos>"]
    assert out["assistant_masks"] == [0] * (len(tokens) - 3) + [1, 1, 1]

    with pytest.raises(Exception, match="Unsupported chat role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_tokenizer_custom_vocabulary() -> None:
    tokenizer = build_tokenizer(["hello", "world", "hello"])
    assert len(tokenizer) == 7 + 2
    assert tokenizer.decode(tokenizer("Hello world x").input_ids) == "hello world <unk>"
    with pytest.raises(ValueError, match="non-empty"):
        build_tokenizer(["ok", ""])


def test_default_vocabulary_covers_task_words() -> None:
    tokenizer = build_tokenizer()
    vocab = tokenizer.get_vocab()
    for task in TASKS.values():
        for row in task.make_sft_dataset(20, seed=0):
            for word in split_words(row["prompt"] + row["completion"]):
                assert word in vocab
    assert set(DEFAULT_VOCAB) <= set(vocab)


# ---------------------------------------------------------------------------------------------------------- models
def test_model_saves_reloads_and_generates(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert isinstance(model, LlamaForCausalLM)
    assert model.config.model_type == "llama"
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 2, 3)
    assert model.generation_config.pad_token_id == 0 and model.generation_config.eos_token_id == 3
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.attention_dropout == 0.0

    fresh = build_tiny_model(build_tokenizer())
    for (name, saved), (_, built) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(saved, built), name

    batch = tokenizer(["say : c", "count : 3"], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=5, do_sample=True, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 2 and batch.input_ids.shape[1] < out.shape[1] <= batch.input_ids.shape[1] + 5


def test_load_tiny_model_points_config_at_directory(model_dir: Path) -> None:
    model, tokenizer = load_tiny_model(model_dir)
    assert Path(model.config._name_or_path) == model_dir
    assert tokenizer("say : a").input_ids


def test_build_is_deterministic_and_leaves_global_rng_alone() -> None:
    tokenizer = build_tokenizer()
    state = torch.random.get_rng_state()
    a, b = build_tiny_model(tokenizer, seed=1), build_tiny_model(tokenizer, seed=1)
    c = build_tiny_model(tokenizer, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight  # tied by default
    untied = build_tiny_model(tokenizer, tie_word_embeddings=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight


def test_model_size_arguments() -> None:
    model = build_tiny_model(build_tokenizer(), hidden_size=32, num_layers=1, num_heads=2, intermediate_size=48)
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads) == (32, 1, 2)
    with pytest.raises(ValueError, match="divisible"):
        build_tiny_model(build_tokenizer(), hidden_size=30, num_heads=4)


def test_reward_and_value_models(tmp_path: Path) -> None:
    path = save_tiny_reward_model(tmp_path / "rm")
    reward_model = AutoModelForSequenceClassification.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert reward_model.config.num_labels == 1 and reward_model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["say : c c c", "say : c"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = reward_model(**batch).logits
    assert scores.shape == (2, 1)

    value_model = build_tiny_value_model(tokenizer)
    with torch.no_grad():
        values = value_model(**batch).logits
    assert values.shape == (2, batch.input_ids.shape[1], 1)


# ----------------------------------------------------------------------------------------------------------- tasks
def test_split_words_mirrors_the_tokenizer() -> None:
    assert split_words("C,c 12<eos> say") == ["c", ",", "c", "1", "2", "say"]
    assert split_words("") == []
    tokenizer = build_tokenizer()
    text = "say : c, 12 letters!"
    assert split_words(text) == tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)


def test_target_letter_reward_values() -> None:
    prompts = ["say : c"] * 5
    completions = ["c c a", "", "C c", "c, c", "a b"]
    assert target_letter_reward(prompts, completions) == pytest.approx([2 / 3, 0.0, 1.0, 2 / 3, 0.0])
    # The dataset column wins over the prompt; TRL's extra keyword arguments are ignored.
    assert target_letter_reward(["say : c"], ["a a"], target=["a"], completion_ids=[[7, 7]], trainer_state=None) == [
        1.0
    ]
    conversational = target_letter_reward(
        [[{"role": "user", "content": "say : b"}]], [[{"role": "assistant", "content": "b x b b"}]]
    )
    assert conversational == [0.75]
    assert TARGET_LETTER.success("say : c", "c c") and not TARGET_LETTER.success("say : c", "c a")
    assert not TARGET_LETTER.success("say : c", "")


def test_token_kind_reward_values() -> None:
    prompts = ["say : digits", "say : digits", "say : letters", "say : letters"]
    completions = ["1 2 a", "12 !", "a b 7 ,", "say"]
    assert token_kind_reward(prompts, completions) == pytest.approx([2 / 3, 2 / 3, 0.5, 0.0])
    assert TOKEN_KIND.success("say : digits", "4 2") and not TOKEN_KIND.success("say : letters", "a 1")


def test_exact_length_reward_values() -> None:
    prompts = ["count : 3"] * 4 + ["count : 1"]
    completions = ["a b c", "a b", "", "a b c d e", "x"]
    assert exact_length_reward(prompts, completions) == pytest.approx([1.0, 0.5, 0.25, 1 / 3, 1.0])
    assert exact_length_reward(["count : 9"], ["a"], target=[2]) == [0.5]
    assert EXACT_LENGTH.success("count : 2", "a ,") and not EXACT_LENGTH.success("count : 2", "a")
    # Decoded, chat-templated prompts split numbers into digits.
    assert EXACT_LENGTH.parse_target("<bos><|user|> count : 1 2<|assistant|> ") == 12


def test_reward_errors() -> None:
    with pytest.raises(ValueError, match="cannot find its target"):
        target_letter_reward(["count : 3"], ["a"])
    with pytest.raises(ValueError, match="prompts"):
        token_kind_reward(["say : digits"], ["1", "2"])


def test_reward_functions_have_readable_names() -> None:
    from trl.trainer.utils import get_callable_name

    names = {task.name: get_callable_name(task.reward_func) for task in TASKS.values()}
    assert names == {
        "target_letter": "target_letter_reward",
        "token_kind": "token_kind_reward",
        "exact_length": "exact_length_reward",
    }


@pytest.mark.parametrize("name", sorted(TASKS))
def test_datasets_are_deterministic_and_consistent(name: str) -> None:
    task = get_task(name)
    rl = task.make_dataset(32, seed=3)
    assert rl.column_names == ["prompt", "target"]
    assert rl.to_dict() == task.make_dataset(32, seed=3).to_dict()
    assert rl.to_dict() != task.make_dataset(32, seed=4).to_dict()
    assert all(task.parse_target(row["prompt"]) == row["target"] for row in rl)

    chat = task.make_dataset(4, seed=3, conversational=True)
    assert chat[0]["prompt"] == [{"role": "user", "content": rl[0]["prompt"].rstrip()}]
    # Plain prompts end with a space, so TRL's `prompt + completion` for a reward model keeps the word boundary.
    assert all(row["prompt"].endswith(" ") for row in rl)

    sft = task.make_sft_dataset(32, seed=5)
    assert sft.column_names == ["prompt", "completion"]
    assert sft.to_dict() == task.make_sft_dataset(32, seed=5).to_dict()
    assert all(row["completion"].startswith(" ") for row in sft)
    assert all(task.success(row["prompt"], row["completion"]) for row in sft)
    assert task.rewards(sft["prompt"], sft["completion"]) == [1.0] * 32

    pref = task.make_preference_dataset(32, seed=6)
    assert pref.column_names == ["prompt", "chosen", "rejected"]
    assert pref.to_dict() == task.make_preference_dataset(32, seed=6).to_dict()
    chosen = task.rewards(pref["prompt"], pref["chosen"])
    rejected = task.rewards(pref["prompt"], pref["rejected"])
    assert all(c > r for c, r in zip(chosen, rejected, strict=True))

    chat_pref = task.make_preference_dataset(2, seed=6, conversational=True)
    assert chat_pref[0]["chosen"] == [{"role": "assistant", "content": pref[0]["chosen"].strip()}]
    assert task.success_rate(sft["prompt"][:2], ["", ""]) == 0.0


def test_get_task_and_registry() -> None:
    assert get_task("target_letter") is TARGET_LETTER
    assert set(TASKS) == {"target_letter", "token_kind", "exact_length"}
    with pytest.raises(ValueError, match="exact_length, target_letter, token_kind"):
        get_task("nope")
    with pytest.raises(TypeError):
        TASKS["new"] = TARGET_LETTER  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        TARGET_LETTER.max_words = 3  # type: ignore[misc]


def test_recommended_rl_kwargs_build_trl_configs(tmp_path: Path) -> None:
    from trl import GRPOConfig, RLOOConfig

    for name in TASKS:
        kwargs = recommended_rl_kwargs(name)
        kwargs["max_steps"] = -1
        assert recommended_rl_kwargs(name)["max_steps"] > 0  # a fresh dict each call
        for config_class in (RLOOConfig, GRPOConfig):
            config = config_class(output_dir=str(tmp_path), **recommended_rl_kwargs(name))
            assert config.use_cpu and not config.bf16 and not config.gradient_checkpointing
            assert config.beta > 0 and config.num_generations == 4
    with pytest.raises(ValueError, match="valid names"):
        recommended_rl_kwargs("nope")


def test_limit_torch_threads_restores_the_thread_count() -> None:
    before = torch.get_num_threads()
    with limit_torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match=">= 1"), limit_torch_threads(0):
        pass


# ---------------------------------------------------------------------------------------------------------- slow
def _short_run_kwargs(task_name: str, max_steps: int) -> dict:
    kwargs = recommended_rl_kwargs(task_name)
    kwargs.update(max_steps=max_steps, per_device_train_batch_size=8, seed=0)
    return kwargs


@pytest.mark.slow
def test_rloo_two_steps_change_every_parameter(model_dir: Path, tmp_path: Path) -> None:
    from trl import RLOOConfig, RLOOTrainer

    task = TOKEN_KIND  # dense reward: every group has distinct rewards, so every step has a gradient
    args = RLOOConfig(output_dir=str(tmp_path), **_short_run_kwargs(task.name, 2))
    trainer = RLOOTrainer(
        model=str(model_dir), reward_funcs=task.reward_func, args=args, train_dataset=task.make_dataset(64, seed=0)
    )
    assert trainer.ref_model is not None  # beta != 0: reloaded from the saved directory
    before = {name: param.detach().clone() for name, param in trainer.model.named_parameters()}
    with limit_torch_threads(1):
        trainer.train()
    assert trainer.state.global_step == 2
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param.detach(), before[name]), f"{name} did not change"


@pytest.mark.slow
def test_grpo_accepts_model_object_and_processing_class(model_dir: Path, tmp_path: Path) -> None:
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_tiny_model(model_dir)
    task = TARGET_LETTER
    args = GRPOConfig(output_dir=str(tmp_path), **_short_run_kwargs(task.name, 2))
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=task.reward_func,
        args=args,
        train_dataset=task.make_dataset(64, seed=0, conversational=True),
        processing_class=tokenizer,
    )
    with limit_torch_threads(1):
        trainer.train()
    assert trainer.state.global_step == 2
    assert any("rewards/target_letter_reward/mean" in entry for entry in trainer.state.log_history)


@pytest.mark.slow
def test_rloo_learns_target_letter(tmp_path: Path) -> None:
    from trl import RLOOConfig, RLOOTrainer

    task = TARGET_LETTER
    path = save_tiny_model(tmp_path / "model")
    args = RLOOConfig(output_dir=str(tmp_path / "run"), seed=0, **recommended_rl_kwargs(task.name))
    trainer = RLOOTrainer(
        model=str(path), reward_funcs=task.reward_func, args=args, train_dataset=task.make_dataset(4000, seed=0)
    )
    with limit_torch_threads(1):
        trainer.train()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    assert first < 0.2 and last > 0.6, (first, last)
