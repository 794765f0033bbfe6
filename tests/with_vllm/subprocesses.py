"""What the vLLM tests share: running ``vllm_runs.py`` in ``.venv-vllm``, and a ``trl vllm-serve`` that is always
stopped. The fixtures built on them are in ``conftest.py``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_TRL = REPO / ".venv-vllm" / "bin" / "trl"
RUNS = Path(__file__).with_name("vllm_runs.py")
SETUP_HINT = "the vLLM environment .venv-vllm is missing or broken: run `bash scripts/setup_vllm.sh`"
SERVER_START_S = 420
RUN_GROUP_S = 480


def vllm_environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_vllm_python(args: list[str], timeout: float) -> None:
    try:
        done = subprocess.run(
            [str(VLLM_PYTHON), str(RUNS), *args],
            check=False,
            env=vllm_environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-3000:]
        pytest.fail(f"{' '.join(args[:1])} ran past {timeout} s; stderr tail:\n{tail!r}")
    if done.returncode != 0:
        pytest.fail(f"vllm_runs.py {args[0]} exited {done.returncode}:\n{done.stderr[-4000:]}")


def check_vllm_environment() -> Path:
    """The ``.venv-vllm`` interpreter, after checking that it imports vLLM, TRL and trl_basics."""
    if not VLLM_PYTHON.exists():
        pytest.fail(SETUP_HINT)
    check = subprocess.run(
        [str(VLLM_PYTHON), "-c", "import vllm, trl, trl_basics"],
        check=False,
        env=vllm_environment(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check.returncode != 0:
        pytest.fail(f"{SETUP_HINT}\n{check.stderr[-2000:]}")
    return VLLM_PYTHON


def run_group(runs: list[dict], model: str, workdir: Path) -> list[dict]:
    """Train ``runs`` one after another in one ``.venv-vllm`` process; their results, in order."""
    spec, out = workdir / "spec.json", workdir / "results.json"
    spec.write_text(json.dumps({"model": model, "output_dir": str(workdir / "runs"), "runs": runs}))
    run_vllm_python(["train", str(spec), str(out)], timeout=RUN_GROUP_S)
    results = json.loads(out.read_text())
    assert len(results) == len(runs)
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"trl vllm-serve exited with {process.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"trl vllm-serve was not healthy after {timeout} s")


@contextlib.contextmanager
def served(model: str, log: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """A real ``trl vllm-serve`` of ``model`` on a free localhost port, with the HTTP weight receiver, logging to
    ``log``; yields the process and its URL (not yet healthy: see ``healthy_url``) and always stops it."""
    port = free_port()
    command = [
        str(VLLM_TRL),
        "vllm-serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce_eager",
        "--worker-extension-cls",
        "trl_basics.vllm_cpu.WeightReceiver",
    ]
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, env=vllm_environment(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        # The server runs vLLM's engine in child processes: stop the whole session it leads.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def healthy_url(process: subprocess.Popen, url: str, log: Path) -> str:
    """``url`` once the server answers ``/health``; the test fails with the log's tail if it never does."""
    try:
        wait_healthy(url, process, SERVER_START_S)
    except (RuntimeError, TimeoutError) as err:
        pytest.fail(f"{err}; log tail:\n{log.read_text()[-3000:]}")
    return url
