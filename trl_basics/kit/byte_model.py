"""A tiny causal LM for the byte-level tokenizer (see [`build_byte_tokenizer`]), built from a config, never downloaded.

``save_tiny_byte_model(directory, corpus=tool_corpus())`` saves both, the tokenizer's merges learnt on the tool tasks'
transcripts; a TRL trainer accepts ``str(directory)`` as its model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from trl_basics.kit.byte_tokenizer import build_byte_tokenizer
from trl_basics.kit.model import _save, build_tiny_model

__all__ = ["save_tiny_byte_model"]


def save_tiny_byte_model(
    directory: str | os.PathLike[str],
    corpus: Iterable[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Build the byte-level tokenizer and a tiny Llama for it (head_dim = hidden_size / num_heads, 32 by default).

    Args:
        directory: Where to save (created if missing).
        corpus: Texts the tokenizer learns merges from (e.g. [`tool_corpus`]); ``None`` for its default corpus.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence; prompts with a tool schema are a few hundred tokens.
        seed: Seed of the weight initialisation.

    Returns:
        The directory as a `Path`; a TRL trainer accepts ``str(directory)`` as its ``model``.
    """
    tokenizer = build_byte_tokenizer(corpus, model_max_length=max_position_embeddings)
    model = build_tiny_model(
        tokenizer, hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings, seed
    )
    return _save(model, tokenizer, directory)
