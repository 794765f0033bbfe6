"""Models and data the TRL feature-path scenarios share: saved once per session, built from configs (no download)."""

import gc

import pytest
import torch
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Qwen3MoeConfig,
    Qwen3MoeForCausalLM,
)

from trl_basics.kit.model import tiny_llama_config
from trl_basics.kit.tokenizer import build_tokenizer


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


# The kit's chat template, with list contents rendered part by part (TRL turns multimodal prompts into
# [{"type": "image"}, {"type": "text", "text": ...}]); an image part becomes the processor's "<image>" placeholder.
_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}{%- else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<image> {%- else -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)
VLM_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}<|assistant|> {% generation %}" + _CONTENT + "{{ eos_token }}"
    "{% endgeneration %}{%- else -%}<|{{ message['role'] }}|> " + _CONTENT + "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|> {% endif -%}"
)


@pytest.fixture(scope="session")
def vlm_model_dir(tmp_path_factory):
    """A tiny LLaVA (one-layer CLIP vision tower on 28x28 images, 2x2 patches, one-layer Llama) and its processor."""
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=tiny_llama_config(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config).float()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    path = tmp_path_factory.mktemp("tiny-vlm")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def image_dataset(task):
    """Conversational prompts of the kit task, each with a random 28x28 RGB image (column ``image``)."""
    import datasets
    import numpy as np
    from PIL import Image

    base = task.make_dataset(16, seed=0, conversational=True)
    rng = np.random.RandomState(0)
    images = [Image.fromarray((rng.rand(28, 28, 3) * 255).astype("uint8")) for _ in range(len(base))]
    features = datasets.Features({**base.features, "image": datasets.Image()})
    return datasets.Dataset.from_dict({**base.to_dict(), "image": images}, features=features)


@pytest.fixture(scope="session")
def byte_model_dir(tmp_path_factory):
    """The kit's tiny model for the byte-level tokenizer (merges learnt on the tool tasks' transcripts)."""
    from trl_basics.kit.byte_model import save_tiny_byte_model
    from trl_basics.kit.tool_tasks import tool_corpus

    return str(save_tiny_byte_model(tmp_path_factory.mktemp("tiny-byte"), corpus=tool_corpus()))
