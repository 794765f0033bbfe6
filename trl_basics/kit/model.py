"""Tiny randomly initialised Llama models (policy, reward model, critic) built from a config, never downloaded.

TRL reloads the reference model from ``model.config._name_or_path`` whenever ``beta != 0`` (and the policy is not a
PEFT model), so a model built in memory must be saved first. [`save_tiny_model`] writes the model and its tokenizer
to one directory; pass that directory (a string) to a TRL trainer, or the model reloaded with [`load_tiny_model`]
together with its tokenizer as ``processing_class``.

A Llama config is used on purpose: next to it, ``AutoTokenizer.from_pretrained`` reloads the kit's word-level
tokenizer as the generic fast tokenizer (next to a Qwen2 config it would come back as ``Qwen2Tokenizer``, which
returns empty ids for every text).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaForTokenClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trl_basics.kit.tokenizer import build_tokenizer

__all__ = [
    "build_tiny_model",
    "build_tiny_reward_model",
    "build_tiny_value_model",
    "load_tiny_model",
    "save_tiny_model",
    "save_tiny_reward_model",
    "tiny_llama_config",
]


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    *,
    tie_word_embeddings: bool = True,
    num_labels: int = 1,
) -> LlamaConfig:
    """Return a small Llama config whose vocabulary and special-token ids match ``tokenizer``.

    Args:
        tokenizer: The tokenizer the model will be used with (it must define pad, BOS and EOS tokens).
        hidden_size: Width of the residual stream; must be divisible by ``num_heads``.
        num_layers: Number of decoder layers.
        num_heads: Attention heads (also the key/value heads: no grouped-query attention).
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence (prompt plus completion) the model is meant for.
        tie_word_embeddings: Share the input embedding with the LM head.
        num_labels: Outputs of a classification head (ignored by the causal LM).

    Returns:
        A `LlamaConfig` with all dropout off and pad/BOS/EOS ids set.
    """
    if hidden_size % num_heads != 0:
        raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is None:
            raise ValueError(f"The tokenizer must define `{name}`.")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_dropout=0.0,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=num_labels,
    )


def _instantiate(model_class: type[PreTrainedModel], config: LlamaConfig, seed: int) -> PreTrainedModel:
    """Initialise ``model_class`` from ``config`` with a private RNG seeded by ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.float().eval()


def _generation_config(config: LlamaConfig) -> GenerationConfig:
    """Return a generation config carrying only the special-token ids of ``config``."""
    return GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    seed: int = 0,
    *,
    tie_word_embeddings: bool = True,
) -> LlamaForCausalLM:
    """Build a randomly initialised tiny `LlamaForCausalLM` for ``tokenizer`` (float32, eval mode).

    The same arguments always give the same weights. Pad/BOS/EOS ids are set in both the config and the generation
    config. The model is not saved: TRL with ``beta != 0`` needs a saved one (see [`save_tiny_model`]).

    Args:
        tokenizer: The tokenizer the model will be used with.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the model is meant for.
        seed: Seed of the weight initialisation.
        tie_word_embeddings: Share the input embedding with the LM head. On by default: a tied random model slightly
            prefers repeating its input token, which makes the kit tasks markedly faster to learn with RL.

    Returns:
        The model.
    """
    config = tiny_llama_config(
        tokenizer,
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size,
        max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = _instantiate(LlamaForCausalLM, config, seed)
    model.generation_config = _generation_config(config)
    return model


def build_tiny_reward_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> LlamaForSequenceClassification:
    """Build a tiny `LlamaForSequenceClassification` with one output (a scalar reward per sequence).

    ``pad_token_id`` is set in the config, so the score is read at the last non-pad token of each row.

    Args:
        tokenizer: The tokenizer the model will be used with.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the model is meant for.
        seed: Seed of the weight initialisation.

    Returns:
        The model (float32, eval mode).
    """
    config = tiny_llama_config(
        tokenizer,
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size,
        max_position_embeddings,
        tie_word_embeddings=False,
        num_labels=1,
    )
    return _instantiate(LlamaForSequenceClassification, config, seed)


def build_tiny_value_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> LlamaForTokenClassification:
    """Build a tiny `LlamaForTokenClassification` with one output per token (a critic's value estimates).

    Args:
        tokenizer: The tokenizer the model will be used with.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the model is meant for.
        seed: Seed of the weight initialisation.

    Returns:
        The model (float32, eval mode); ``model(input_ids).logits`` has shape ``(batch, length, 1)``.
    """
    config = tiny_llama_config(
        tokenizer,
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size,
        max_position_embeddings,
        tie_word_embeddings=False,
        num_labels=1,
    )
    return _instantiate(LlamaForTokenClassification, config, seed)


def _save(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | os.PathLike[str]) -> Path:
    """Save ``model`` and ``tokenizer`` into ``directory`` (created if missing) and point the config at it."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # TRL reloads the reference model from `config._name_or_path`; make the in-memory object point here too.
    model.config._name_or_path = str(path)
    return path


def save_tiny_model(
    directory: str | os.PathLike[str],
    vocab: Sequence[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    seed: int = 0,
    *,
    tie_word_embeddings: bool = True,
) -> Path:
    """Build the kit tokenizer and a tiny causal LM and save both into ``directory``.

    ``AutoModelForCausalLM.from_pretrained(directory)`` and ``AutoTokenizer.from_pretrained(directory)`` reload them,
    and a TRL trainer accepts ``str(directory)`` as its ``model`` (reloading the reference model from it).

    Args:
        directory: Where to save (created if missing; existing model files are overwritten).
        vocab: Ordinary tokens of the tokenizer (see [`build_tokenizer`]); ``None`` for the default vocabulary.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the model is meant for.
        seed: Seed of the weight initialisation.
        tie_word_embeddings: Share the input embedding with the LM head.

    Returns:
        The directory as a `Path`.
    """
    tokenizer = build_tokenizer(vocab)
    model = build_tiny_model(
        tokenizer,
        hidden_size,
        num_layers,
        num_heads,
        intermediate_size,
        max_position_embeddings,
        seed,
        tie_word_embeddings=tie_word_embeddings,
    )
    return _save(model, tokenizer, directory)


def save_tiny_reward_model(
    directory: str | os.PathLike[str],
    vocab: Sequence[str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> Path:
    """Build the kit tokenizer and a tiny one-output sequence classifier and save both into ``directory``.

    ``AutoModelForSequenceClassification.from_pretrained(directory)`` reloads it with ``num_labels=1``.

    Args:
        directory: Where to save (created if missing).
        vocab: Ordinary tokens of the tokenizer; ``None`` for the default vocabulary.
        hidden_size: Width of the residual stream.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        intermediate_size: Width of the MLP.
        max_position_embeddings: Longest sequence the model is meant for.
        seed: Seed of the weight initialisation.

    Returns:
        The directory as a `Path`.
    """
    tokenizer = build_tokenizer(vocab)
    model = build_tiny_reward_model(
        tokenizer, hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings, seed
    )
    return _save(model, tokenizer, directory)


def load_tiny_model(directory: str | os.PathLike[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Reload a model saved by [`save_tiny_model`] (float32) and its tokenizer.

    The model's ``config._name_or_path`` is the directory, so TRL can reload the reference model from it when the
    model object is passed to a trainer together with ``processing_class=tokenizer``.

    Args:
        directory: The directory given to [`save_tiny_model`].

    Returns:
        ``(model, tokenizer)``.
    """
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer
