"""The model of ``gpu.py``: a Qwen2-architecture causal LM with random weights and the kit tokenizer, written
locally, and the generation settings that never sample an id the tokenizer cannot decode."""

from __future__ import annotations

import os
from pathlib import Path

QWEN2_VOCAB = 151_936
# name: (hidden_size, layers, attention heads, key/value heads, intermediate_size, vocab_size)
MODELS = {
    "tiny": (64, 2, 4, 2, 128, 1024),
    "0.5b": (896, 24, 14, 2, 4864, QWEN2_VOCAB),
    "1.5b": (1536, 28, 12, 2, 8960, QWEN2_VOCAB),
}


def write_model(directory: str | os.PathLike[str], size: str, device: str = "cpu", seed: int = 0) -> Path:
    """A Qwen2 causal LM of ``size`` (see ``MODELS``), random weights, and the kit tokenizer, saved to ``directory``.

    Weights are bf16 unless ``size`` is ``tiny`` (fp32, for CPU runs). The vocabulary is larger than the tokenizer's:
    see [`generation_kwargs`].
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from trl_basics.kit.tokenizer import build_tokenizer

    hidden, layers, heads, kv_heads, intermediate, vocab = MODELS[size]
    tokenizer = build_tokenizer()
    if vocab < len(tokenizer):
        raise ValueError(f"the model's vocabulary ({vocab}) must hold the tokenizer's {len(tokenizer)} ids")
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    config = Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, dtype=dtype,
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    path = Path(directory)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tokenizer(model_dir: str):
    """The kit tokenizer saved next to the model. Passed to every trainer as ``processing_class``: next to a Qwen2
    config, ``AutoTokenizer`` would reload it as ``Qwen2Tokenizer``, which does not tokenize with the kit's
    vocabulary."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(model_dir)


def undecodable_ids(tokenizer, vocab_size: int) -> list[int]:
    """The ids of the embedding that ``tokenizer`` has no token for (``len(tokenizer)`` to ``vocab_size - 1``)."""
    return list(range(len(tokenizer), vocab_size))


def generation_kwargs(tokenizer, vocab_size: int, completion_length: int, backend: str) -> dict:
    """TRL's ``generation_kwargs``: exactly ``completion_length`` tokens, never an id the tokenizer cannot decode.

    transformers' ``generate`` takes ``suppress_tokens`` (their logits become -inf before sampling, as TRL does for a
    VLM's image token); vLLM's ``SamplingParams`` take the complement, ``allowed_token_ids``.
    """
    if backend == "vllm":
        return {"min_tokens": completion_length, "allowed_token_ids": list(range(len(tokenizer)))}
    kwargs = {"min_new_tokens": completion_length}
    if vocab_size > len(tokenizer):
        kwargs["suppress_tokens"] = undecodable_ids(tokenizer, vocab_size)
    return kwargs


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
