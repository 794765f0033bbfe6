"""Supervised warm-up on worked conversations, so a tiny model starts RL knowing how to write a tool call.

A random tiny model never writes a well-formed ``<tool_call>`` block, and RL cannot reward what is never sampled.
[`demonstrations`] mixes two kinds of worked conversation for a tool task: the full tool transcript (call, tool
result, answer copied from it; [`ToolTask.transcript`]) and a direct answer with no tool ([`ToolTask.direct_transcript`],
which a tiny model can imitate only in form: it cannot multiply). [`sft_on_demonstrations`] fine-tunes a saved model
on them, with the loss on the assistant's tokens only, and saves the result; RL then decides how often to call.

The token ids are exactly those TRL sees during a tool rollout: the prompt rendered with the tools and the generation
prompt, each assistant turn up to its end-of-turn token, and the tool result as TRL's suffix renders it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["IGNORE_INDEX", "demonstration_ids", "demonstrations", "sft_on_demonstrations"]

IGNORE_INDEX = -100
"""Label of a token that is not trained on (prompt, tool result, the template's glue)."""


def _render(tokenizer, messages: list[dict], tools: list, generation_prompt: bool) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
    )


def demonstration_ids(tokenizer, messages: list[dict], tools: Sequence = ()) -> tuple[list[int], list[int]]:
    """Token ids of a worked conversation and its labels: each assistant turn, end-of-turn token included, is
    trained on; everything else is ``IGNORE_INDEX``.

    Raises:
        ValueError: If the chat template does not render each turn's context as a prefix of the conversation.
    """
    tools = list(tools)
    full = _render(tokenizer, messages, tools, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = _render(tokenizer, messages[:k], tools, generation_prompt=True)
        if full[: len(context)] != context:
            raise ValueError("The chat template does not render a turn's context as a prefix of the conversation.")
        end = full.index(tokenizer.eos_token_id, len(context)) + 1
        labels[len(context) : end] = full[len(context) : end]
    return full, labels


def demonstrations(task, n: int, tool_share: float, seed: int = 0) -> list[list[dict]]:
    """``n`` worked conversations on ``task``'s rows (drawn with ``seed``): a share ``tool_share`` of them use the
    tool ([`ToolTask.transcript`]), the others answer directly ([`ToolTask.direct_transcript`])."""
    if not 0.0 <= tool_share <= 1.0:
        raise ValueError(f"tool_share must lie in [0, 1], got {tool_share}.")
    rng = random.Random(seed)
    rows = task.make_dataset(n, seed=seed)
    return [task.transcript(row) if rng.random() < tool_share else task.direct_transcript(row) for row in rows]


def sft_on_demonstrations(
    model_dir: str | os.PathLike[str],
    conversations: Sequence[list[dict]],
    output_dir: str | os.PathLike[str],
    tools: Sequence = (),
    steps: int = 200,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Fine-tune the saved model in ``model_dir`` on ``conversations`` (loss on assistant turns) and save it.

    Args:
        model_dir: A folder with a causal LM and its tokenizer (e.g. [`save_tiny_byte_model`]).
        conversations: Worked conversations (lists of chat messages), e.g. from [`demonstrations`].
        output_dir: Where the fine-tuned model and the tokenizer go (created if missing).
        tools: The tools the prompts are rendered with (the same list the RL trainer gets).
        steps: Optimizer steps (AdamW, constant learning rate).
        batch_size: Conversations per step, drawn without replacement and reshuffled each pass.
        learning_rate: The AdamW learning rate.
        seed: Seed of the batch order.

    Returns:
        ``output_dir`` as a `Path`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    examples = [demonstration_ids(tokenizer, conversation, tools) for conversation in conversations]
    shared = _shared_prefix([ids for ids, _ in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    rng = random.Random(seed)
    order: list[int] = []
    model.train()
    for _ in range(steps):
        if len(order) < batch_size:
            order += rng.sample(range(len(examples)), len(examples))
        batch, order = [examples[i] for i in order[:batch_size]], order[batch_size:]
        loss = _batch_loss(model, tokenizer.pad_token_id, batch, shared)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    path = Path(output_dir)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _shared_prefix(sequences: list[list[int]]) -> int:
    """Length of the token prefix all ``sequences`` share (the system prompt and the tool schemas), less one token so
    that every sequence keeps a token of its own."""
    first, length = sequences[0], min(len(ids) for ids in sequences) - 1
    for ids in sequences[1:]:
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    return max(length, 0)


def _batch_loss(model, pad_token_id: int, batch: list[tuple[list[int], list[int]]], shared: int) -> torch.Tensor:
    """The mean next-token loss on the labelled tokens of ``batch``. The ``shared`` prefix common to every sequence is
    run once and its key/value cache repeated for the batch (the same result, a fraction of the work: the prefix is
    most of each sequence)."""
    from transformers import DynamicCache

    cache = None
    if shared:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([batch[0][0][:shared]]), cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(batch))
    width = max(len(ids) for ids, _ in batch) - shared
    input_ids = torch.tensor([ids[shared:] + [pad_token_id] * (width - len(ids) + shared) for ids, _ in batch])
    labels = torch.tensor([lab[shared:] + [IGNORE_INDEX] * (width - len(lab) + shared) for _, lab in batch])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids) + shared) for ids, _ in batch])
    positions = torch.arange(shared, shared + width).expand(len(batch), -1)
    out = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, cache=cache)
    logits = out.logits[:, :-1].flatten(0, 1)
    return torch.nn.functional.cross_entropy(logits, labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
