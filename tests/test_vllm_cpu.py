"""The HTTP weight channel for ``trl vllm-serve`` without CUDA: encoding, chunking, the worker extension's methods and
the seam that gives TRL's client the channel. The end-to-end runs against a real server are in ``tests/with_vllm/``."""

from __future__ import annotations

import types

import pytest
import torch

from trl_basics import seams
from trl_basics.vllm_cpu import (
    WeightReceiver,
    decode_weights,
    encode_weights,
    refresh_cpu_gemm_copies,
    weight_chunks,
)


def test_weights_survive_encoding_exactly():
    weights = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5, dtype=torch.float32)}
    decoded = decode_weights(encode_weights(weights))
    assert set(decoded) == set(weights)
    for name, value in weights.items():
        assert torch.equal(decoded[name], value)


def test_chunks_copy_each_tensor_when_it_is_read():
    # TRL merges a LoRA adapter while it iterates and unmerges it in place afterwards: what was read must stay.
    tensor = torch.ones(4)

    def named():
        yield "t", tensor
        tensor.mul_(0.0)  # the "unmerge" after the iterator went past
        yield "u", torch.full((2,), 7.0)

    chunks = list(weight_chunks(named(), limit=1))  # one tensor per chunk
    assert len(chunks) == 2
    assert torch.equal(decode_weights(chunks[0])["t"], torch.ones(4))
    assert torch.equal(decode_weights(chunks[1])["u"], torch.full((2,), 7.0))


def test_receiver_loads_weights_into_the_worker_model():
    loaded = []

    class Model(torch.nn.Module):
        def load_weights(self, weights):
            loaded.extend(weights)

    worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(model=Model()))
    count = WeightReceiver.trl_basics_load_weights(worker, encode_weights({"w": torch.eye(2)}))
    assert count == 1 and loaded[0][0] == "w" and torch.equal(loaded[0][1], torch.eye(2))
    assert WeightReceiver.trl_basics_weight_receiver(worker) == "ready"


def test_gemm_copies_are_rebuilt_only_where_the_weight_is_kept():
    rebuilt = []

    class Method:
        def process_weights_after_loading(self, module):
            rebuilt.append(module)

    kept = torch.nn.Linear(2, 2)
    kept.cpu_linear, kept.quant_method = object(), Method()
    removed = torch.nn.Linear(2, 2)
    removed.weight = torch.nn.Parameter(torch.empty(0))
    removed.cpu_linear, removed.quant_method = object(), Method()
    plain = torch.nn.Linear(2, 2)
    refresh_cpu_gemm_copies(torch.nn.Sequential(kept, removed, plain))
    assert rebuilt == [kept]


def args(**fields):
    base = {"use_vllm": True, "vllm_mode": "server", "device": torch.device("cpu")}
    base.update(fields)
    return types.SimpleNamespace(**base)


def test_server_mode_without_cuda_gets_the_http_client_while_the_parent_builds():
    from trl.generation import vllm_generation

    original = vllm_generation.VLLMClient
    with seams.vllm_http_weight_sync(args()):
        swapped = vllm_generation.VLLMClient
        assert swapped is not original and issubclass(swapped, original)
        for method in ("init_communicator", "update_named_params", "close_communicator"):
            assert method in vars(swapped)
    assert vllm_generation.VLLMClient is original


@pytest.mark.parametrize(
    "fields",
    [{"use_vllm": False}, {"vllm_mode": "colocate"}, {"device": torch.device("cuda", 0)}],
    ids=["no-vllm", "colocate", "cuda"],
)
def test_other_set_ups_keep_trls_client(fields):
    from trl.generation import vllm_generation

    original = vllm_generation.VLLMClient
    with seams.vllm_http_weight_sync(args(**fields)):
        assert vllm_generation.VLLMClient is original


def test_the_http_client_refuses_a_server_without_the_extension():
    from trl.generation.vllm_client import VLLMClient

    client_class = seams._http_weight_client(VLLMClient)
    client = client_class.__new__(client_class)  # no server: only the check is exercised
    client.base_url = "http://127.0.0.1:9"

    class Session:
        def post(self, url, json):
            return types.SimpleNamespace(status_code=404, text="Not Found", json=dict)

    client.session = Session()
    with pytest.raises(RuntimeError, match="--worker-extension-cls trl_basics.vllm_cpu.WeightReceiver"):
        client.init_communicator("cpu")


def test_engine_model_needs_a_colocated_engine():
    with pytest.raises(ValueError, match="colocated vLLM engine"):
        seams.vllm_engine_model(types.SimpleNamespace())


def test_trls_vllm_client_still_has_what_the_seam_replaces_and_uses():
    """Pinned against TRL 1.16: the client class the generation module builds, the three methods replaced, and what
    the replacement uses (``_post``; the server mode's sync calls ``update_named_params``)."""
    import inspect

    from trl.generation import vllm_generation
    from trl.generation.vllm_client import VLLMClient

    assert vllm_generation.VLLMClient is VLLMClient
    assert list(inspect.signature(VLLMClient.init_communicator).parameters) == ["self", "device"]
    assert list(inspect.signature(VLLMClient.update_named_params).parameters) == ["self", "metadata", "named_params"]
    assert list(inspect.signature(VLLMClient.close_communicator).parameters) == ["self"]
    assert callable(VLLMClient._post)
    source = inspect.getsource(vllm_generation.VLLMGeneration.sync_weights)
    assert "self.vllm_client.update_named_params(" in source
    assert "self.vllm_client.init_communicator(" in inspect.getsource(vllm_generation.VLLMGeneration._init_vllm)
    assert "driver_worker.model_runner.model" in source  # where the colocated engine's model lives (vllm_engine_model)
