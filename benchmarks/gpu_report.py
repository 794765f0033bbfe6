"""The tables of ``gpu.py``: per configuration and trainer the pooled step time, tokens per second, peak GPU
memory and host syncs, the targets with their verdicts, and the JSON summary."""

from __future__ import annotations

import argparse

from common import TARGETS, TRAINERS, median, ratio_interval, verdict
from gpu_model import MODELS

# The TRL trainer each trl_basics trainer subclasses: the reference for "host syncs added".
PARENTS = {"rloo": "trl_rloo", "rloo_tricks": "trl_rloo", "reinforce_pp": "trl_grpo", "ppo_max": "trl_grpo"}


def summarize(args: argparse.Namespace, results: dict) -> dict:
    """Per configuration and trainer: step time pooled over the timed steps of every repeat, memory, syncs."""
    cell: dict = {}
    kept = slice(args.warmup, None)
    for row in results["timing"]:
        cell.setdefault((row["config"], row["trainer"]), []).append(row)
    out = {}
    for key, mine in cell.items():
        steps = [t for r in mine for t in r["step_times_s"][kept]]
        syncs = [s for r in mine for s in r["syncs_per_step"]]
        ours = [s for r in mine for s in r["syncs_trl_basics_per_step"]]
        peaks = [r["peak_memory_bytes"] for r in mine if r["peak_memory_bytes"] is not None]
        step = median(steps)
        out[key] = {
            "step_time_s": step,
            "fastest_s": min(steps),
            "samples": len(steps),
            "tokens_per_s": args.batch_size * median(r["mean_completion_length"] for r in mine) / step,
            "length": median(r["mean_completion_length"] for r in mine),
            "syncs": median(syncs),
            "syncs_trl_basics": median(ours),
            "peak_memory_bytes": median(peaks) if peaks else None,
            "resident_memory_bytes": median(r["resident_memory_bytes"] for r in mine) if peaks else None,
            "transient_peak_bytes": median(r["transient_peak_bytes"] for r in mine) if peaks else None,
            "params_held": mine[0]["params_held"],
        }
    return out


def _gib(value) -> str:
    return "n/a" if value is None else f"{value / 2**30:.2f}"


def render(args: argparse.Namespace, results: dict, command: str) -> str:
    cell = summarize(args, results)
    configs = list(dict.fromkeys(r["config"] for r in results["timing"]))
    have = set(args.trainers)
    hidden, layers, heads, kv_heads, intermediate, vocab = MODELS[args.model]
    cuda = args.device == "cuda"
    vllm_note = (
        "vLLM colocate: measured (one process per trainer)."
        if results["vllm"]
        else "vLLM colocate: not measured (" + ("vllm is not importable" if not results["vllm_importable"]
                                                else "switched off or not on a GPU") + ")."
    )  # fmt: skip
    lines = [
        f"Command: `{command}`",
        "",
        (
            f"Run finished {results['finished']}, {results['wall_s'] / 60:.1f} min on {results['device_name']}; "
            f"{results['versions']}. Model: Qwen2 `{args.model}` (hidden {hidden}, {layers} layers, {heads} heads, "
            f"{kv_heads} key/value heads, MLP {intermediate}, vocabulary {vocab:,}, "
            f"{'bf16' if cuda else 'fp32'}, SDPA), random weights. B = {args.batch_size} completions per step "
            f"({args.num_generations} per prompt), each exactly T = {args.completion_length} tokens. "
            f"{args.steps} steps per trainer and run ({args.warmup} warm-up step(s) dropped from the times and used to "
            f"count host syncs), {args.repeats} repeats, all trainers in turns in one process "
            f"{'for every configuration' if args.one_process else 'per configuration'} (vLLM: one per trainer). "
            f"{vllm_note}"
        ),
        "",
    ]
    for config in configs:
        rows = [n for n in args.trainers if (config, n) in cell]
        lines += [f"### {config}", "", "#### Targets", ""]
        lines += [
            "Ratios of the median step times (CUDA-synchronised wall clock of `training_step`)"
            + (", with a 90% bootstrap interval" if len(rows) > 1 else "")
            + ". Peak memory: the trainer's peak GPU memory as if alone (held + largest transient).",
            "",
            "| target | bound | measured | fastest steps | verdict |",
            "|---|---|---|---|---|",
        ]
        sub = {"timing": [{**r, "geometry": config} for r in results["timing"] if r["config"] == config]}
        for _, label, num, den, metric, bound in TARGETS:
            if not {num, den} <= have or (config, num) not in cell or (config, den) not in cell:
                continue
            a, b = cell[config, num], cell[config, den]
            if metric == "step":
                value = a["step_time_s"] / b["step_time_s"]
                low, high = ratio_interval(sub, args, config, num, den, key="step_times_s")
                fastest = a["fastest_s"] / b["fastest_s"]
                lines.append(
                    f"| {label} | ≤ {bound:.2f} | {value:.3f} [{low:.3f}, {high:.3f}] | {fastest:.3f} | "
                    f"{verdict(value, bound, (low, high))} |"
                )
            elif a["peak_memory_bytes"] is not None and b["peak_memory_bytes"]:
                value = a["peak_memory_bytes"] / b["peak_memory_bytes"]
                lines.append(f"| {label} | ≤ {bound:.2f} | {value:.3f} | | {verdict(value, bound)} |")
            else:
                lines.append(f"| {label} | ≤ {bound:.2f} | n/a (no GPU memory on {args.device}) | | |")
        lines += [
            "",
            "#### Every trainer",
            "",
            (
                "Step: median ms per `training_step` (CUDA-synchronised); tokens/s: generated tokens per second of "
                "step time; peak: GiB as if alone (held: weights and optimizer states; transient: the largest peak of "
                "a step above what was held); host syncs per step (median over the warm-up steps): all of them, those "
                "in trl_basics' own code, and the total minus that of the TRL parent (the syncs trl_basics adds)."
            ),
            "",
            (
                "| trainer | step (ms) | fastest (ms) | tokens/s | peak (GiB) | held (GiB) | transient (GiB) | syncs | "
                "in trl_basics | added over parent |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name in rows:
            r = cell[config, name]
            parent = PARENTS.get(name)
            added = "–"
            if parent is not None and (config, parent) in cell:
                added = f"{r['syncs'] - cell[config, parent]['syncs']:+.0f} ({TRAINERS[parent].label})"
            lines.append(
                f"| {TRAINERS[name].label} | {r['step_time_s'] * 1e3:.1f} | {r['fastest_s'] * 1e3:.1f} | "
                f"{r['tokens_per_s']:.0f} | {_gib(r['peak_memory_bytes'])} | {_gib(r['resident_memory_bytes'])} | "
                f"{_gib(r['transient_peak_bytes'])} | {r['syncs']:.0f} | {r['syncs_trl_basics']:.0f} | {added} |"
            )
        lines.append("")
    lines += ["### Trainers", ""]
    for name in args.trainers:
        lines.append(f"- **{TRAINERS[name].label}**: {TRAINERS[name].description}.")
    return "\n".join(lines) + "\n"


def structure(results: dict, args: argparse.Namespace) -> dict:
    """The machine-readable summary written next to the Markdown (``--json``): one entry per configuration."""
    cell = summarize(args, results)
    out: dict = {}
    for (config, name), value in cell.items():
        out.setdefault(config, {})[name] = value
    return out
