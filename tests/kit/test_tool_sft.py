"""The kit's supervised warm-up for tool use: which tokens are trained on, the demonstration mix, and the shared-prefix
loss (the same value as the plain one)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_basics.kit import MULTIPLY_TOOL_TASK, multiply, save_tiny_byte_model, tool_corpus
from trl_basics.kit.tool_sft import (
    IGNORE_INDEX,
    _batch_loss,
    _shared_prefix,
    demonstration_ids,
    demonstrations,
    sft_on_demonstrations,
)


@pytest.fixture(scope="module")
def byte_dir(tmp_path_factory):
    return str(save_tiny_byte_model(tmp_path_factory.mktemp("byte"), corpus=tool_corpus()))


def test_only_the_assistant_turns_are_labelled(byte_dir):
    tokenizer = AutoTokenizer.from_pretrained(byte_dir)
    row = MULTIPLY_TOOL_TASK.make_dataset(1, seed=3)[0]
    ids, labels = demonstration_ids(tokenizer, MULTIPLY_TOOL_TASK.transcript(row), [multiply])
    assert len(ids) == len(labels)
    trained = tokenizer.decode([t for t in labels if t != IGNORE_INDEX])
    product = row["a"] * row["b"]
    call = f'<tool_call>\n{{"name": "multiply", "arguments": {{"a": {row["a"]}, "b": {row["b"]}}}}}\n</tool_call>'
    assert trained == f"{call}<|im_end|>{product}<|im_end|>"  # the call and the answer, not the prompt nor the result
    # The first labelled token follows exactly the prompt TRL renders for generation.
    prompt = tokenizer.apply_chat_template(
        row["prompt"], tools=[multiply], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert ids[: len(prompt)] == prompt and labels[len(prompt) - 1] == IGNORE_INDEX != labels[len(prompt)]

    _, direct_labels = demonstration_ids(tokenizer, MULTIPLY_TOOL_TASK.direct_transcript(row), [multiply])
    assert tokenizer.decode([t for t in direct_labels if t != IGNORE_INDEX]) == f"{product}<|im_end|>"


def test_demonstrations_mix_tool_and_direct_answers():
    mixed = demonstrations(MULTIPLY_TOOL_TASK, 200, tool_share=0.25, seed=1)
    share = sum(any(m["role"] == "tool" for m in c) for c in mixed) / len(mixed)
    assert 0.15 < share < 0.35
    assert demonstrations(MULTIPLY_TOOL_TASK, 200, tool_share=0.25, seed=1) == mixed  # deterministic
    assert all(any(m["role"] == "tool" for m in c) for c in demonstrations(MULTIPLY_TOOL_TASK, 20, 1.0))
    with pytest.raises(ValueError, match="tool_share"):
        demonstrations(MULTIPLY_TOOL_TASK, 2, tool_share=1.5)


def test_the_shared_prefix_loss_equals_the_plain_loss_and_training_saves(byte_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(byte_dir)
    model = AutoModelForCausalLM.from_pretrained(byte_dir)
    examples = [demonstration_ids(tokenizer, c, [multiply]) for c in demonstrations(MULTIPLY_TOOL_TASK, 6, 0.5)]
    shared = _shared_prefix([ids for ids, _ in examples])
    assert shared > 200  # the system prompt and the tool's schema
    plain = _batch_loss(model, tokenizer.pad_token_id, examples, 0)
    torch.testing.assert_close(_batch_loss(model, tokenizer.pad_token_id, examples, shared), plain)
    conversations = demonstrations(MULTIPLY_TOOL_TASK, 8, 0.5)
    out = sft_on_demonstrations(byte_dir, conversations, tmp_path / "sft", tools=[multiply], steps=3, batch_size=4)
    trained = AutoModelForCausalLM.from_pretrained(out)
    assert _batch_loss(trained, tokenizer.pad_token_id, examples, shared) < plain
    assert AutoTokenizer.from_pretrained(out).get_vocab() == tokenizer.get_vocab()
