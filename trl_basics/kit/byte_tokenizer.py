"""A tiny byte-level BPE tokenizer that can spell anything (JSON tool calls included), built locally.

The kit's word-level tokenizer ([`build_tokenizer`]) knows a few dozen words and cannot write ``{"a": 12}``. This one
starts from the 256 byte symbols, so every string round-trips exactly, and learns a few hundred BPE merges on a small
deterministic corpus (the chat boilerplate and tool-call transcripts), so a prompt with a tool schema stays a few
hundred tokens long. Digits are always single tokens, which keeps numbers easy for a tiny model to copy.

Its chat template is Qwen 2.5's, read at run time from the file TRL ships (``trl/chat_templates/qwen2_5.jinja``).
TRL recognises that template: ``GRPOTrainer(tools=...)`` accepts it, sets the matching response parser and reads
tool calls written as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` out of generated text.
Nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import resources

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import get_json_schema

__all__ = [
    "BYTE_EOS_TOKEN",
    "BYTE_PAD_TOKEN",
    "BYTE_SPECIAL_TOKENS",
    "CHAT_TEMPLATE_FILE",
    "TOOL_MARKUP_TOKENS",
    "build_byte_tokenizer",
    "default_corpus",
    "load_tool_chat_template",
    "render_chat",
]

BYTE_PAD_TOKEN = "<|endoftext|>"
"""Padding (and nominal BOS) token; it never appears in a rendered chat."""
BYTE_EOS_TOKEN = "<|im_end|>"
"""End of a chat turn: generation stops here, and TRL aligns tool-response suffixes on it."""
BYTE_SPECIAL_TOKENS: tuple[str, ...] = (BYTE_PAD_TOKEN, "<|im_start|>", BYTE_EOS_TOKEN)
"""Special tokens, ids 0 to 2 (skipped when decoding with ``skip_special_tokens=True``)."""
TOOL_MARKUP_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<tools>",
    "</tools>",
)
"""Tool markup, one ordinary added token each (kept when decoding), so a tool call starts with a single token."""

CHAT_TEMPLATE_FILE = "qwen2_5.jinja"
"""The template file, in TRL's ``chat_templates`` package folder, that the tokenizer uses."""

_BOILERPLATE_MESSAGES = (
    {"role": "user", "content": "What is 123 times 456?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 123, "b": 456}}}],
    },
    {"role": "tool", "name": "multiply", "content": "56088"},
    {"role": "assistant", "content": "56088"},
)
_BOILERPLATE_TOOL = {
    "type": "function",
    "function": {
        "name": "multiply",
        "description": "Multiply two integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "description": "The first factor."},
                "b": {"type": "integer", "description": "The second factor."},
            },
            "required": ["a", "b"],
        },
        "return": {"type": "integer", "description": "The product."},
    },
}


def load_tool_chat_template() -> str:
    """Return the text of TRL's bundled Qwen 2.5 chat template (read from the installed ``trl`` package)."""
    return resources.files("trl").joinpath("chat_templates", CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")


def render_chat(messages: list[dict], tools: list | None = None, template: str | None = None) -> str:
    """Render ``messages`` (and ``tools``: JSON schemas or typed, documented functions) as text, without a tokenizer.

    Uses the same Jinja settings as transformers' ``apply_chat_template``; ``template`` defaults to
    [`load_tool_chat_template`]. Used to build a merge-learning corpus before the tokenizer exists.
    """
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    schemas = None if tools is None else [t if isinstance(t, dict) else get_json_schema(t) for t in tools]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    return env.from_string(template or load_tool_chat_template()).render(
        messages=messages, tools=schemas, add_generation_prompt=False
    )


def default_corpus() -> list[str]:
    """The merge-learning corpus used when none is given: the template rendered around one sample tool exchange."""
    return [
        render_chat(list(_BOILERPLATE_MESSAGES), [_BOILERPLATE_TOOL]),
        render_chat(list(_BOILERPLATE_MESSAGES[:1])),
    ]


def build_byte_tokenizer(
    corpus: Iterable[str] | None = None, vocab_size: int = 512, model_max_length: int = 1024
) -> PreTrainedTokenizerFast:
    """Build a byte-level BPE tokenizer with the Qwen 2.5 chat template TRL ships.

    The same arguments always give the same vocabulary.

    Args:
        corpus: Texts to learn BPE merges from (typically rendered chats of the tasks it will serve); ``None`` for
            [`default_corpus`]. Every byte is in the vocabulary whatever the corpus, so any text can be encoded.
        vocab_size: Largest vocabulary (bytes, merges and added tokens together); the corpus may yield fewer merges.
        model_max_length: The tokenizer's ``model_max_length``.

    Returns:
        A `PreTrainedTokenizerFast` with ``padding_side="left"``, ``<|endoftext|>`` as pad (and BOS, which the
        template never writes), ``<|im_end|>`` as EOS, and the tool markup as single added tokens. Encoding adds no
        special tokens; ``decode(encode(text)) == text`` for every text without special-token strings.
    """
    texts = default_corpus() if corpus is None else list(corpus)
    backend = Tokenizer(models.BPE())
    # Digits first (each its own piece), then GPT-2's byte-level split; no prefix space so text round-trips exactly.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in BYTE_SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    markup = [AddedToken(t, special=False, normalized=False) for t in TOOL_MARKUP_TOKENS]
    backend.add_tokens(markup)
    backend.train_from_iterator(texts, trainer=trainer)
    backend.add_tokens(markup)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=BYTE_PAD_TOKEN,
        bos_token=BYTE_PAD_TOKEN,
        eos_token=BYTE_EOS_TOKEN,
        padding_side="left",
        truncation_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=load_tool_chat_template(),
        model_max_length=model_max_length,
    )
