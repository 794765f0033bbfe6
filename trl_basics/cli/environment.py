"""The environment of the training runs that `compare`, `ablate` and `demo` start.

A child run gets only what it needs, taken from the environment the command was started with (before a YAML file's
``env:`` block, which TRL's parser applies to the running process only): the variables named below, or starting
with one of the prefixes below. Everything else, a YAML ``env:`` block included, stays with the parent.
"""

from __future__ import annotations

import os

LAUNCH_ENVIRONMENT = dict(os.environ)  # read when the command line is imported, before any YAML `env:` block
CHILD_VARIABLES = frozenset(
    {
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
        "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM",
        "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    }
)  # fmt: skip
CHILD_PREFIXES = (
    "LC_", "XDG_", "HF_", "HUGGINGFACE_", "TRANSFORMERS_", "TRL_", "ACCELERATE_", "TORCH", "PYTORCH_", "CUDA_",
    "NVIDIA_", "NCCL_", "HIP_", "ROCR_", "WANDB_", "COVERAGE_",
)  # fmt: skip


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of ``base`` (default: the environment at start-up) that a child training run needs."""
    if base is None:
        base = LAUNCH_ENVIRONMENT
    env = {key: value for key, value in base.items() if key in CHILD_VARIABLES or key.startswith(CHILD_PREFIXES)}
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is fastest and timings stay comparable
    env["PYTHONUNBUFFERED"] = "1"
    return env


__all__ = ["CHILD_PREFIXES", "CHILD_VARIABLES", "LAUNCH_ENVIRONMENT", "child_environment"]
