"""A tiny word-level tokenizer, built locally with the `tokenizers` library.

The tokenizer splits text on whitespace, punctuation and single digits and maps each piece to one id of a small,
fixed vocabulary (lower-cased). Decoding joins tokens with single spaces, so ``decode(encode(x))`` returns ``x``
lower-cased with one space between pieces. It is meant for tiny random models in tests and CPU examples: nothing is
downloaded.

Saved next to a Llama config, ``AutoTokenizer.from_pretrained(directory)`` reloads it as the generic fast tokenizer.
(Saved next to a Qwen2 config, transformers 5.x reloads it as ``Qwen2Tokenizer``, which returns empty ids.)
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "DEFAULT_VOCAB",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "ROLE_TOKENS",
    "SPECIAL_TOKENS",
    "UNK_TOKEN",
    "build_tokenizer",
]

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"

ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>")
"""Special tokens that open a chat turn (one per role)."""

SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, *ROLE_TOKENS)
"""All special tokens, in id order (ids 0 to 6)."""

DEFAULT_VOCAB: tuple[str, ...] = (
    *string.ascii_lowercase,
    *string.digits,
    "say",
    "count",
    "letters",
    "digits",
    ":",
    ",",
    ".",
    "?",
    "!",
)
"""Ordinary (non-special) tokens of the default vocabulary: letters, digits, the task words and punctuation."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|assistant|> {% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- elif message['role'] in ['system', 'user'] -%}"
    "<|{{ message['role'] }}|> {{ message['content'] }}"
    "{%- else -%}"
    "{{ raise_exception('Unsupported chat role: ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|> {% endif -%}"
)
"""Jinja chat template: ``<bos><|user|> say : a<|assistant|> a a<eos>``.

System and user turns are an opening role token followed by the content; an assistant turn ends with the EOS token
(so generation stops at the end of the turn) and is wrapped in ``{% generation %}`` markers, which lets
``apply_chat_template(..., return_assistant_tokens_mask=True)`` (and TRL's ``assistant_only_loss``) find it.
"""


def build_tokenizer(vocab: Sequence[str] | None = None) -> PreTrainedTokenizerFast:
    """Build a small word-level tokenizer with pad, EOS, BOS and UNK tokens and a chat template.

    Args:
        vocab: Ordinary tokens, in id order after the special tokens. Duplicates and special tokens are dropped.
            Tokens should be lower-case pieces the pre-tokenizer produces (a word, a run of punctuation, or a single
            digit); others can never be matched. Defaults to [`DEFAULT_VOCAB`].

    Returns:
        A `PreTrainedTokenizerFast` with ``padding_side="left"`` (generation-friendly batches) and
        ``add_special_tokens`` adding nothing (prompts carry no implicit BOS; the chat template adds one).
        Ids: ``<pad>`` 0, ``<unk>`` 1, ``<bos>`` 2, ``<eos>`` 3, then the role tokens, then ``vocab``.
    """
    words = DEFAULT_VOCAB if vocab is None else tuple(vocab)
    ordered: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *words):
        if not isinstance(token, str) or not token:
            raise ValueError(f"Vocabulary entries must be non-empty strings, got {token!r}.")
        if token not in ordered:
            ordered[token] = len(ordered)

    backend = Tokenizer(models.WordLevel(vocab=ordered, unk_token=UNK_TOKEN))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    # A WordPiece decoder without continuation pieces joins tokens with single spaces.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens(list(SPECIAL_TOKENS))

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
        padding_side="left",
        truncation_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
    )
