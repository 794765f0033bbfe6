"""Models and data the TRL feature-path scenarios share: saved once per session, built from configs (no download)."""

import gc

import pytest
import torch
from trainer_helpers import cpu_kwargs, logged
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from trl_basics.kit.tokenizer import build_tokenizer

__all__ = ["cpu_kwargs", "logged"]


@pytest.fixture(scope="module", autouse=True)
def frozen_import_graph():
    """Keep the objects alive at module start out of the garbage collector's reach while the module runs.

    Every ``trainer.train()`` ends in accelerate's ``free_memory``, which runs ``gc.collect()``; with torch and
    transformers imported each full collection walks millions of objects (about a second here). Frozen objects are
    skipped; everything the tests create is still collected as usual.
    """
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def kit_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def moe_model_dir(tmp_path_factory, kit_tokenizer):
    """A one-layer Qwen3-MoE (4 experts, top-2) with router logits and a non-zero load-balancing coefficient.

    Saved with the kit tokenizer; pass that tokenizer as ``processing_class`` (next to a Qwen config
    ``AutoTokenizer`` would reload it as a Qwen2 tokenizer, which does not know the kit's vocabulary).
    """
    tok = kit_tokenizer
    config = Qwen3MoeConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        output_router_logits=True,
        router_aux_loss_coef=0.01,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3MoeForCausalLM(config).float()
    path = tmp_path_factory.mktemp("tiny-moe")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
