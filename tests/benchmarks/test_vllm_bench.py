"""Smoke test of ``benchmarks/vllm_bench.py``: its three parts run end to end in ``.venv-vllm`` at the smallest size
(1 repeat, 2 steps, 4-token completions) and write every table. Timings are never asserted; what the docs say of
truncated sampling is (docs/benchmarks.md, docs/scaling.md)."""

import json
import subprocess

import pytest
from with_vllm.subprocesses import REPO, VLLM_PYTHON, check_vllm_environment, vllm_environment

STEP_TRAINERS = ("grpo", "reinforce_pp", "reinforce_pp_baseline", "rloo", "reinforce_ma", "ppo_max")
IS_MEAN = "sampling/importance_sampling_ratio/mean"
LOGP_GAP = "sampling/sampling_logp_difference/mean"


@pytest.mark.slow
def test_vllm_bench_writes_every_part(tmp_path):
    check_vllm_environment()
    out = tmp_path / "bench.json"
    args = ["--repeats", "1", "--steps", "2", "--tokens", "4", "--output", str(out)]
    done = subprocess.run(
        [str(VLLM_PYTHON), str(REPO / "benchmarks" / "vllm_bench.py"), *args],
        check=False,
        capture_output=True,
        text=True,
        env=vllm_environment(),
        cwd=REPO,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())

    rates = results["throughput"]["tokens_per_s"]
    assert set(rates) == {"vllm", "transformers"} and min(rates.values()) > 0

    steps = results["steps"]
    assert set(steps["step_time_s"]) == set(STEP_TRAINERS)
    assert min(steps["step_time_s"].values()) > 0
    assert steps["ratio_to_grpo"]["grpo"] == 1.0

    rows = results["truncation"]
    assert set(rows) == {f"{t} {s}" for t in ("grpo", "reinforce_pp") for s in ("plain", "top_k=5", "top_p=0.8")}
    for trainer in ("grpo", "reinforce_pp"):
        plain, top_k, top_p = (rows[f"{trainer} {s}"] for s in ("plain", "top_k=5", "top_p=0.8"))
        # Plain sampling: vLLM samples from the trainer's distribution (up to bfloat16), the ratio is about 1.
        assert abs(plain[IS_MEAN] - 1.0) < 0.05
        # Truncated sampling: vLLM's log-probs are of the truncated distribution, so the recomputed ones fall short
        # of them and the ratio drops below 1, the more so the harder the truncation.
        assert top_k[IS_MEAN] < top_p[IS_MEAN] < plain[IS_MEAN]
        assert top_k[LOGP_GAP] > top_p[LOGP_GAP] > plain[LOGP_GAP] >= 0
