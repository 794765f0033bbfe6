"""The kit's tool-use pieces: the byte-level tokenizer with TRL's chat template, the tiny byte model, the multiply-tool
and guess-number tasks, and the opening-call rollout function."""

from __future__ import annotations

from importlib import resources

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import get_json_schema
from trl.chat_template_utils import (
    add_response_schema,
    is_chat_template_prefix_preserving,
    parse_response,
    supports_tool_calling,
)

from trl_basics.kit import (
    GUESS_NUMBER_TASK,
    MULTIPLY_TOOL_TASK,
    GuessNumberEnvironment,
    build_byte_tokenizer,
    guess_number_reward,
    multiply,
    multiply_reward,
    opening_call_rollout,
    save_tiny_byte_model,
    tool_call_reward,
    tool_corpus,
)

CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 123, "b": 456}}\n</tool_call><|im_end|>'


@pytest.fixture(scope="module")
def byte_tokenizer():
    return build_byte_tokenizer(tool_corpus())


def test_byte_tokenizer_spells_anything_and_is_deterministic(byte_tokenizer):
    for text in ('{"a": [1, 2.5e-3, null]} \n\t', "héllo wörld ✓ 東京", CALL.removesuffix("<|im_end|>")):
        assert byte_tokenizer.decode(byte_tokenizer(text)["input_ids"]) == text
    assert byte_tokenizer.unk_token_id is None
    assert build_byte_tokenizer(tool_corpus()).get_vocab() == byte_tokenizer.get_vocab()
    # Digits are single tokens; the tool markup is one token each.
    assert byte_tokenizer.tokenize("4096") == ["4", "0", "9", "6"]
    assert byte_tokenizer.tokenize("<tool_call>") == ["<tool_call>"]


def test_byte_tokenizer_uses_the_template_trl_ships(byte_tokenizer):
    shipped = resources.files("trl").joinpath("chat_templates", "qwen2_5.jinja").read_text(encoding="utf-8")
    assert byte_tokenizer.chat_template == shipped
    assert supports_tool_calling(byte_tokenizer)
    assert is_chat_template_prefix_preserving(byte_tokenizer)


def test_trl_parses_a_tool_call_written_by_the_byte_tokenizer(byte_tokenizer):
    tokenizer = add_response_schema(byte_tokenizer)  # TRL recognises the template
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 123 times 456?"}],
        tools=[multiply],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    parsed = parse_response(tokenizer, tokenizer(CALL)["input_ids"], prefix=prompt, tools=[multiply])
    assert parsed["tool_calls"] == [
        {"type": "function", "function": {"name": "multiply", "arguments": {"a": 123, "b": 456}}}
    ]


def test_tiny_byte_model_saves_and_reloads(tmp_path):
    path = save_tiny_byte_model(tmp_path / "m", corpus=tool_corpus())
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.chat_template == build_byte_tokenizer().chat_template
    assert tokenizer.decode(tokenizer(CALL)["input_ids"]) == CALL


def test_tool_schemas_come_from_docstrings_and_hints():
    assert get_json_schema(multiply)["function"]["parameters"]["required"] == ["a", "b"]
    (guess,) = GUESS_NUMBER_TASK.schema_tools()
    assert get_json_schema(guess)["function"]["parameters"]["properties"]["number"]["type"] == "integer"


def test_multiply_task_is_deterministic_and_its_transcript_scores_one():
    first, again = MULTIPLY_TOOL_TASK.make_dataset(8, seed=3), MULTIPLY_TOOL_TASK.make_dataset(8, seed=3)
    assert first.to_list() == again.to_list()
    assert first.to_list() != MULTIPLY_TOOL_TASK.make_dataset(8, seed=4).to_list()
    for row in first:
        assert 100 <= row["a"] <= 999 and 100 <= row["b"] <= 999 and row["answer"] == str(row["a"] * row["b"])
        transcript = MULTIPLY_TOOL_TASK.transcript(row)
        assert transcript[1] == MULTIPLY_TOOL_TASK.first_call(row["prompt"])
        completion = transcript[len(row["prompt"]) :]
        assert multiply_reward([row["prompt"]], [completion], [row["answer"]]) == [1.0]
        assert tool_call_reward([row["prompt"]], [completion]) == [1.0]
    assert multiply_reward(None, [[{"role": "assistant", "content": "12"}]], ["13"]) == [0.0]
    assert tool_call_reward(None, [[{"role": "assistant", "content": "12"}]]) == [0.0]


def test_guess_number_environment_keeps_state_and_the_reward_reads_it():
    env = GuessNumberEnvironment()
    env.reset(secret=11, prompt=[])
    assert [env.guess(8), env.guess(12), env.guess(11)] == ["higher", "lower", "correct"]
    assert env.found and env.guesses == [8, 12, 11]
    other = GuessNumberEnvironment()
    other.reset(secret=3)
    other.guess(9)
    assert guess_number_reward([env, other]) == pytest.approx([0.8, 0.0])
    env.reset(secret=5)
    assert env.guesses == [] and not env.found
    for row in GUESS_NUMBER_TASK.make_dataset(16, seed=0):
        transcript = GUESS_NUMBER_TASK.transcript(row)
        assert transcript[1] == GUESS_NUMBER_TASK.first_call(row["prompt"])
        assert transcript[-1]["content"] == str(row["secret"])
        assert len([m for m in transcript if m["role"] == "tool"]) <= 5  # binary search over 1..16


class _FakeTrainer:
    def __init__(self, tokenizer):
        self.processing_class = tokenizer
        self.tools = [multiply]


def test_opening_call_rollout_writes_the_tasks_call(byte_tokenizer):
    tokenizer = add_response_schema(byte_tokenizer)
    rows = MULTIPLY_TOOL_TASK.make_dataset(2, seed=0)
    out = opening_call_rollout(MULTIPLY_TOOL_TASK, every=1)([r["prompt"] for r in rows], _FakeTrainer(tokenizer))
    assert out["logprobs"] is None
    for row, prompt_ids, ids in zip(rows, out["prompt_ids"], out["completion_ids"], strict=True):
        assert ids[-1] == tokenizer.eos_token_id
        parsed = parse_response(tokenizer, ids, prefix=prompt_ids, tools=[multiply])
        assert parsed["tool_calls"][0]["function"]["arguments"] == {"a": row["a"], "b": row["b"]}
    with pytest.raises(ValueError, match="every"):
        opening_call_rollout(MULTIPLY_TOOL_TASK, every=0)
