"""A ``rollout_func`` that opens some rollouts with the task's tool call, so a tiny random model meets its tools.

A randomly initialised tiny model essentially never writes a well-formed ``<tool_call>`` block, so a tool-use run
would never call the tool and prove nothing. [`opening_call_rollout`] returns a function for TRL's
``GRPOTrainer(rollout_func=...)`` (inherited by every GRPO-based trainer here) that writes the first assistant turn of
every ``every``-th rollout as the task's opening call ([`ToolTask.first_call`], the call a perfect agent makes) and
samples the model for the others. Everything after that first turn is TRL's own path: it parses the call, runs the
real tool (or environment method), appends the tool output (``tool_mask`` 0) and lets the model generate the next turn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["opening_call_rollout"]


def _prompt_ids(tokenizer, prompt: list[dict], tools: list) -> list[int]:
    return tokenizer.apply_chat_template(
        prompt, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False
    )


def _scripted_completion(tokenizer, prompt: list[dict], call: dict, tools: list, prompt_ids: list[int]) -> list[int]:
    """Token ids of ``call`` as the assistant turn after ``prompt``, up to and including the end-of-turn token."""
    full = tokenizer.apply_chat_template([*prompt, call], tools=tools or None, tokenize=True, return_dict=False)
    if full[: len(prompt_ids)] != prompt_ids:
        raise ValueError("The chat template does not render the prompt as a prefix of the conversation.")
    completion = full[len(prompt_ids) :]
    return completion[: completion.index(tokenizer.eos_token_id) + 1]


@torch.no_grad()
def _sample(trainer, batch: list[list[int]]) -> list[list[int]]:
    """Sample one completion per prompt from the trainer's model (left-padded batch, cut after the first EOS)."""
    tokenizer = trainer.processing_class
    width = max(len(ids) for ids in batch)
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in batch])
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
    device = trainer.accelerator.device
    out = trainer.model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        max_new_tokens=trainer.max_completion_length,
        do_sample=True,
        temperature=trainer.temperature,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    completions = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        completions.append([t for t in row if t != tokenizer.pad_token_id])
    return completions


def opening_call_rollout(task, every: int = 2) -> Callable[[list, object], dict]:
    """Build a ``rollout_func`` whose first turn is ``task``'s opening tool call in every ``every``-th rollout.

    Args:
        task: A kit tool task (``MULTIPLY_TOOL_TASK``, ``GUESS_NUMBER_TASK``); its ``first_call`` reads the call from
            the prompt.
        every: Rollouts ``0, every, 2*every, ...`` of each batch open with the call; the others are sampled from the
            model (``every=1``: all open with the call).

    Returns:
        ``rollout_func(prompts, trainer) -> {"prompt_ids", "completion_ids", "logprobs": None}``; the prompts are
        rendered with ``trainer.tools`` (the standalone tools and the environment's methods).
    """
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}.")

    def rollout_func(prompts: list, trainer) -> dict:
        tokenizer = trainer.processing_class
        tools = list(trainer.tools)
        prompt_ids = [_prompt_ids(tokenizer, prompt, tools) for prompt in prompts]
        completion_ids: list[list[int] | None] = [None] * len(prompts)
        sampled = []
        for i, prompt in enumerate(prompts):
            if i % every == 0:
                call = task.first_call(prompt)
                completion_ids[i] = _scripted_completion(tokenizer, prompt, call, tools, prompt_ids[i])
            else:
                sampled.append(i)
        if sampled:
            for i, ids in zip(sampled, _sample(trainer, [prompt_ids[i] for i in sampled]), strict=True):
                completion_ids[i] = ids
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout_func
