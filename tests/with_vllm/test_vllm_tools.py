"""Tools and vLLM together: every GRPO-based trainer runs TRL's multi-turn tool loop with vLLM generating each turn.

The model is the kit's byte model after a supervised warm-up on the task's worked conversations (every one of them
through the tool), so that it writes real calls: about three rollouts in four call the tool. Nothing is scripted:
vLLM samples every call, TRL parses it, runs the tool (``tools=[multiply]``) or the environment's method
(``environment_factory``, guess-the-number, with state over up to four calls), appends the reply and lets vLLM write
the next turn. The rollouts therefore hold holes (``tool_mask`` 0) that vLLM never sampled.

Colocated (the engine in the trainer's process, bfloat16) and against ``trl vllm-serve`` (float32), each run trains
2 steps and checks, besides everything a vLLM run checks (``checks.check_run``: weights synced, importance-sampling
metrics, the trainer's own log-probs and values):

- tools were called in every step, and every generation round holds tool-output tokens;
- no tool-output token got an advantage or (PPO-max) a value target, while the policy's tokens did;
- on the policy's tokens the rollout's log-probs line up with vLLM's sampling log-probs across the tool outputs: to
  float32 rounding against the server (a token shifted by a tool reply would be off by nats), and to within bfloat16
  error on average in the colocated engine;
- the environment heard the model's guesses.
"""

from __future__ import annotations

import pytest

from trl_basics.kit import GUESS_NUMBER_TASK, MULTIPLY_TOOL_TASK, save_tiny_byte_model, tool_corpus
from trl_basics.kit.tool_sft import demonstrations, sft_on_demonstrations
from with_vllm.checks import check_run
from with_vllm.subprocesses import check_vllm_environment, healthy_url, run_group, served

pytestmark = pytest.mark.slow  # minutes of vLLM trainings: outside the README's fast command

TASKS = {"multiply": MULTIPLY_TOOL_TASK, "guess_number": GUESS_NUMBER_TASK}
SFT_STEPS = 150
# The warm model's calls are fragile: at the generation tests' learning rate (3e-3) PPO-max's first update can stop
# them altogether, leaving the second round without a tool output to check.
GENTLE = {"learning_rate": 1e-3}
COLOCATE_RUNS = [
    {"trainer": "reinforce_pp", "setting": "tricks", "peft": True, "is_mode": "token_truncate", "task": "multiply"},
    {"trainer": "reinforce_pp_baseline", "setting": "defaults", "is_mode": "sequence_mask", "task": "multiply"},
    {"trainer": "ppo_max", "setting": "defaults", "is_mode": "sequence_mask", "task": "guess_number"},
    {"trainer": "reinforce_ma_grpo", "setting": "tricks", "is_mode": "token_mask", "task": "guess_number"},
]
SERVER_RUNS = [  # the server serves the multiply model
    {"trainer": "rloo_grpo", "setting": "tricks", "is_mode": "sequence_truncate", "task": "multiply"},
    {"trainer": "ppo_max", "setting": "tricks", "is_mode": "token_truncate", "task": "multiply"},
]


@pytest.fixture(scope="module")
def tool_models(tmp_path_factory) -> dict[str, str]:
    """Per task, the byte model after ``SFT_STEPS`` steps on the task's tool transcripts."""
    base = save_tiny_byte_model(tmp_path_factory.mktemp("byte"), corpus=tool_corpus())
    models = {}
    for name, task in TASKS.items():
        conversations = demonstrations(task, 512, tool_share=1.0, seed=0)
        out = tmp_path_factory.mktemp(f"sft-{name}")
        models[name] = str(
            sft_on_demonstrations(base, conversations, out, task.schema_tools(), steps=SFT_STEPS, batch_size=8)
        )
    return models


@pytest.fixture(scope="module")
def tool_server(tool_models, tmp_path_factory):
    """``trl vllm-serve`` of the multiply model; it boots while the colocated runs train."""
    check_vllm_environment()
    log = tmp_path_factory.mktemp("vllm-tool-server") / "server.log"
    with served(tool_models["multiply"], log) as (process, url):
        yield process, url, log


def with_models(runs: list[dict], mode: str, models: dict[str, str], **extra) -> list[dict]:
    return [{**run, "mode": mode, "model": models[run["task"]], "config": GENTLE, **extra} for run in runs]


@pytest.fixture(scope="module")
def colocate_results(tool_models, tool_server, tmp_path_factory):
    runs = with_models(COLOCATE_RUNS, "colocate", tool_models)
    return run_group(runs, tool_models["multiply"], tmp_path_factory.mktemp("tools-colocate"))


@pytest.fixture(scope="module")
def server_results(tool_models, tool_server, colocate_results, tmp_path_factory):
    url = healthy_url(*tool_server)
    runs = with_models(SERVER_RUNS, "server", tool_models, server_url=url)
    return run_group(runs, tool_models["multiply"], tmp_path_factory.mktemp("tools-server"))


def check_tool_run(result: dict) -> None:
    check_run(result)
    run = result["run"]
    assert len(result["steps"]) == 2
    for step in result["steps"]:
        assert step["tools/call_frequency"] > 0, "a step without a tool call"
        assert step["tools/failure_frequency"] < 1
    for round_ in result["rounds"]:
        assert round_["tool_tokens"] > 0, "a generation round without a tool output"
        assert round_["policy_tokens"] > 0
        if "advantage_at_tool_tokens" in round_:  # per-token advantages
            assert round_["advantage_at_tool_tokens"] == 0.0
            assert round_["advantage_at_policy_tokens"] > 0.0
        if run["trainer"] == "ppo_max":
            assert round_["return_at_tool_tokens"] == 0.0
        if run["mode"] == "server":
            assert round_["logprobs_vs_vllm"] < 1e-4
        else:
            assert round_["logprobs_vs_vllm_mean"] < 2e-2
    if run["task"] == "guess_number":
        assert result["environment_guesses"] > 0


def run_id(run: dict) -> str:
    return "-".join([run["trainer"], run["setting"], run["task"], *(["lora"] if run.get("peft") else [])])


@pytest.mark.parametrize("index", range(len(COLOCATE_RUNS)), ids=[run_id(r) for r in COLOCATE_RUNS])
def test_tools_colocate(index, colocate_results):
    check_tool_run(colocate_results[index])


@pytest.mark.parametrize("index", range(len(SERVER_RUNS)), ids=[run_id(r) for r in SERVER_RUNS])
def test_tools_server(index, server_results):
    check_tool_run(server_results[index])
