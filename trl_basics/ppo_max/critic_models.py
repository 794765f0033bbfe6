"""The PPO-max critic's model: a scalar value head on a causal-LM backbone, loaded, checked, read and restored.

The critic is ``AutoModelForTokenClassification(num_labels=1)``: one value per position. Loaded from a reward model
(``*ForSequenceClassification``, one output) its ``score`` head becomes the value head unchanged, so at the last
token V starts as the reward model's score (PPO-max initialises the critic from the reward model, Zheng et al. 2023
§5.4). Loaded from a causal LM it keeps the backbone and gets a fresh head. Dropout is switched off (a critic with
dropout regresses on noisy targets; "N implementation details of RLHF", dropout off).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel


def load_value_model(
    model_id: str,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    **model_init_kwargs: Any,
) -> PreTrainedModel:
    """Load ``model_id`` (a reward model or a causal LM) as a one-output token classifier: the critic.

    The value head is bias-free, like a reward model's ``score`` head, so a reward model loads without a missing key;
    classifier dropout is 0.
    """
    config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    check_critic_architecture(config)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    config.token_classification_bias = False
    if dtype is not None:
        model_init_kwargs["dtype"] = dtype
    model = AutoModelForTokenClassification.from_pretrained(
        model_id, config=config, trust_remote_code=trust_remote_code, **model_init_kwargs
    )
    disable_dropout(model)
    return model


def value_model_from_causal_lm(model: PreTrainedModel) -> PreTrainedModel:
    """A critic built from an in-memory causal LM (one never saved): same config and backbone weights, fresh head."""
    check_critic_architecture(model.config)
    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.classifier_dropout = 0.0
    config.token_classification_bias = False
    critic = AutoModelForTokenClassification.from_config(config, dtype=model.dtype)
    prefix = critic.base_model_prefix
    getattr(critic, prefix).load_state_dict(getattr(model, prefix).state_dict())
    disable_dropout(critic)
    return critic.to(model.device)


def given_value_model(model: nn.Module) -> nn.Module:
    """A ready critic passed in by the user: refused unless a one-output token classifier; its dropout is switched off."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not type(base).__name__.endswith("ForTokenClassification") or base.config.num_labels != 1:
        raise TypeError(
            f"critic_model must be a *ForTokenClassification model with num_labels=1, got "
            f"{type(base).__name__}; pass a path instead to load a reward model or causal LM as a critic"
        )
    disable_dropout(model)
    return model


def check_critic_architecture(config: Any) -> None:
    """Refuse, with the way out, an architecture transformers has no token-classification (value-head) class for."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING

    if type(config) not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING:
        raise ValueError(
            f"PPO-max's critic is an AutoModelForTokenClassification, and transformers has none for "
            f"{type(config).__name__} (model_type {getattr(config, 'model_type', '?')!r}), e.g. a vision-language "
            "model. Pass critic_model: a ready *ForTokenClassification model with num_labels=1 (for example built on "
            "the text model alone), or the path of a text-only reward model; or use a critic-free trainer "
            "(RLOOTrainer, ReinforcePlusPlusTrainer)."
        )


def disable_dropout(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def with_trainable_value_head(peft_config: Any) -> Any:
    """A copy of ``peft_config`` that also trains (and saves) the value head ``score`` next to the adapter.

    PEFT adds ``score`` on its own only for ``task_type="TOKEN_CLS"``; without it the head would stay frozen at its
    initial value.
    """
    peft_config = copy.copy(peft_config)
    modules = list(peft_config.modules_to_save or [])
    if "score" not in modules:
        modules.append("score")
    peft_config.modules_to_save = modules
    return peft_config


def critic_values(
    critic: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    logits_to_keep: int,
    batch_size: int | None = None,
) -> Tensor:
    """V(s_t) for the last ``logits_to_keep`` tokens: ``(B, logits_to_keep)`` in float32.

    The value of completion token t is read at the position *before* it (the state in which a_t is chosen), the same
    shift as the policy's log-probs: positions [P-1, P+T-1) of a P-token prompt and T-token completion.
    """
    batch_size = batch_size or input_ids.size(0)
    chunks = []
    for start in range(0, input_ids.size(0), batch_size):
        end = start + batch_size
        out = critic(input_ids=input_ids[start:end], attention_mask=attention_mask[start:end], use_cache=False)
        chunks.append(out.logits[:, -logits_to_keep - 1 : -1, 0])
    return torch.cat(chunks, dim=0).float()


def load_critic_weights(critic: nn.Module, directory: str) -> None:
    """Load what ``save_pretrained`` wrote (full weights, possibly sharded, or a PEFT adapter) back into ``critic``."""
    from safetensors.torch import load_file

    adapter = os.path.join(directory, "adapter_model.safetensors")
    if os.path.exists(adapter):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(critic, load_file(adapter))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"critic adapter checkpoint has unexpected keys: {unexpected[:5]}")
        return
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state_dict = {}
    for name in files:
        state_dict.update(load_file(os.path.join(directory, name)))
    critic.load_state_dict(state_dict, strict=True)
