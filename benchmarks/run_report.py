"""The tables of ``run.py``: per geometry and trainer the pooled step times, their ratios against the targets with
bootstrap intervals, the unit costs and the ideal step times, peak memory, and growth with B and T."""

from __future__ import annotations

import argparse
import os
import platform

from common import (
    MODELS,
    TARGETS,
    TRAINERS,
    UNIT_NAMES,
    cpu_model,
    geometries,
    median,
    ratio_interval,
    timing_steps,
    verdict,
)


def ideal_step_time(units: dict, passes: dict) -> float:
    return units["gen"] + sum(count * units[name] for name, count in passes.items())


def _pooled(values) -> list[float]:
    """Unit-cost entries are lists of timed iterations (or, in older result files, one median)."""
    out: list[float] = []
    for value in values:
        out.extend(value if isinstance(value, list) else [value])
    return out


def summarize(args: argparse.Namespace, results: dict) -> dict:
    """Per geometry and trainer: step times pooled over the timed steps of every repeat (median and fastest)."""
    cell: dict = {}
    kept = slice(args.warmup, None)
    for _, _, geo in geometries(args):
        rows = [r for r in results["timing"] if r["geometry"] == geo]
        units = {k: median(_pooled(r[k] for r in rows if r["trainer"] == "units")) for k in UNIT_NAMES}
        cell[geo, "units"] = units
        for name in args.trainers:
            mine = [r for r in rows if r["trainer"] == name]
            cpu = [t for r in mine for t in r["step_cpu_times_s"][kept]]
            wall = [t for r in mine for t in r["step_times_s"][kept]]
            row = {
                "step_cpu_s": median(cpu),
                "step_time_s": median(wall),
                "fastest_cpu_s": min(cpu),
                "turn_cpu_s": median(r["turn_cpu_s"] for r in mine),
                "samples": len(cpu),
                "ideal_s": ideal_step_time(units, TRAINERS[name].passes),
                "params_held": mine[0]["params_held"],
                "params_trained": mine[0]["params_trained"],
                "length": median(r["mean_completion_length"] for r in mine),
            }
            # fp32 weights held + gradients and two AdamW moments of what is trained
            row["model_state"] = row["params_held"] + 3 * row["params_trained"]
            cell[geo, name] = row
    for name in args.trainers:
        mine = [r for r in results["memory"] if r["trainer"] == name]
        keys = ("peak_rss_mb", "peak_over_built_mb", "peak_over_before_mb", "step_time_s", "step_cpu_s")
        cell["memory", name] = {k: median(r[k] for r in mine) for k in keys}
    return cell


def ratio(cell: dict, geo: str, num: str, den: str, key: str = "step_cpu_s") -> float:
    return cell[geo, num][key] / cell[geo, den][key]


def render(args: argparse.Namespace, results: dict, command: str) -> str:
    cell = summarize(args, results)
    geos = [label for _, _, label in geometries(args)]
    dims = {label: (b, t) for b, t, label in geometries(args)}
    base = geos[0]
    hidden, layers, heads, intermediate = MODELS[args.model]
    have = set(args.trainers)
    lines = [
        f"Command: `{command}`",
        "",
        (
            f"Run finished {results.get('finished', '?')}, {results['wall_s'] / 60:.1f} min; "
            f"{results.get('machine', machine_summary())}; {results.get('versions', versions())}. "
            f"Model: kit `{args.model}` (hidden {hidden}, "
            f"{layers} layers, {heads} heads, MLP {intermediate}, vocabulary 339, fp32). 1x geometry: B = "
            f"{args.batch_size} completions per step ({args.num_generations} per prompt), each exactly T = "
            f"{args.completion_length} tokens. Timing: {timing_steps(args, 0)} steps per trainer at 1x and "
            f"{args.steps} at the other geometries ({args.warmup} warm-up steps dropped), all trainers in turns in "
            f"one process per geometry; memory: a fresh process per trainer, {args.memory_steps} steps. "
            f"{args.repeats} repeats; step times are medians over the timed steps of all repeats "
            f"({(timing_steps(args, 0) - args.warmup) * args.repeats} at 1x, "
            f"{(args.steps - args.warmup) * args.repeats} at the other geometries), memory medians over the repeats."
        ),
        "",
        f"### Targets (1x geometry, B = {dims[base][0]}, T = {dims[base][1]})",
        "",
        (
            "Step-time ratios compare the median CPU time per step (the thread's CPU time over TRL's `step_time` "
            "interval, pooled over the timed steps of all repeats), with a 90% bootstrap interval in brackets "
            "(repeats, then whole rounds of turns within them, resampled). Beside it: the ratio of the fastest steps "
            "(contention on a shared machine only ever adds time, so the fastest step approaches the uncontended "
            "cost), the ratio of TRL's wall-clock `step_time` medians (which also count waiting for a core), and the "
            "ideal ratio of the model's own work. Verdicts use the median CPU-time ratio."
        ),
        "",
        "| target | bound | measured (median CPU) | fastest steps | wall `step_time` | ideal (model work) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for key, label, num, den, metric, bound in TARGETS:
        if not {num, den} <= have:
            continue
        if metric == "step":
            cpu, wall = ratio(cell, base, num, den), ratio(cell, base, num, den, "step_time_s")
            fastest = ratio(cell, base, num, den, "fastest_cpu_s")
            ideal = ratio(cell, base, num, den, "ideal_s")
            low, high = ratio_interval(results, args, base, num, den)
            verdicts[key] = (cpu, bound)
            lines.append(
                f"| {label} | ≤ {bound:.2f} | {cpu:.3f} [{low:.3f}, {high:.3f}] | {fastest:.3f} | {wall:.3f} | "
                f"{ideal:.3f} | {verdict(cpu, bound, (low, high))} |"
            )
        elif results["memory"]:
            a, b = cell["memory", num], cell["memory", den]
            built = a["peak_over_built_mb"] / b["peak_over_built_mb"]
            before = a["peak_over_before_mb"] / b["peak_over_before_mb"]
            ideal = cell[base, num]["model_state"] / cell[base, den]["model_state"]
            verdicts[key] = (built, bound)
            lines.append(
                f"| {label}: peak RSS above the built trainer (above the pre-build RSS: {before:.3f}) "
                f"| ≤ {bound:.2f} "
                f"| {built:.3f} | | | {ideal:.3f} (model state) | {verdict(built, bound)} |"
            )
    if {"ppo_max", "reinforce_pp"} <= have:
        for ref in ("reinforce_pp", "trl_grpo"):
            if ref not in have:
                continue
            ideal = cell[base, "ppo_max"]["ideal_s"] / cell[base, ref]["ideal_s"]
            cpu = ratio(cell, base, "ppo_max", ref) / ideal
            low, high = (x / ideal for x in ratio_interval(results, args, base, "ppo_max", ref))
            fastest = ratio(cell, base, "ppo_max", ref, "fastest_cpu_s") / ideal
            wall = ratio(cell, base, "ppo_max", ref, "step_time_s") / ideal
            primary = ref == "reinforce_pp"
            label = f"PPO-max's own overhead: (PPO-max / {TRAINERS[ref].label}) ÷ ideal ratio {ideal:.3f}"
            if not primary:
                label += " (cross-check)"
            if primary:
                verdicts["ppo_overhead"] = (cpu, 1.15)
            lines.append(
                f"| {label} | ≤ 1.15 | {cpu:.3f} [{low:.3f}, {high:.3f}] | {fastest:.3f} | {wall:.3f} | 1 | "
                f"{verdict(cpu, 1.15, (low, high)) if primary else ''} |"
            )

    lines += [
        "",
        "### Step time of every trainer at every geometry",
        "",
        (
            "ms per step. CPU: median thread CPU time over TRL's `step_time` interval; fastest: the fastest of those "
            "steps; wall: median of TRL's `step_time`; turn: median CPU time of the whole optimizer step (adds the "
            "policy's AdamW step, the callbacks and logging); ideal: the model's own work from the unit costs below."
        ),
        "",
        "| geometry | B | T | trainer | CPU | fastest | wall | turn | ideal | CPU / ideal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for geo in geos:
        b, t = dims[geo]
        for name in args.trainers:
            r = cell[geo, name]
            lines.append(
                f"| {geo} | {b} | {t} | {TRAINERS[name].label} | {r['step_cpu_s'] * 1e3:.0f} | "
                f"{r['fastest_cpu_s'] * 1e3:.0f} | {r['step_time_s'] * 1e3:.0f} | {r['turn_cpu_s'] * 1e3:.0f} | "
                f"{r['ideal_s'] * 1e3:.0f} | "
                f"{r['step_cpu_s'] / r['ideal_s']:.2f} |"
            )

    lines += [
        "",
        "### Unit costs: the model's own work (CPU ms, median)",
        "",
        (
            "gen: `generate` of B completions x T tokens with TRL's generation settings; fwd: one no-grad policy "
            "forward with log-probs (TRL's log-prob function); fb: one policy forward+backward; opt: the policy's "
            "AdamW step; cfwd, cfb, copt: the same for the critic (value head instead of the LM head). Both AdamW "
            "steps are fused, the Trainer's default for the policy."
        ),
        "",
        "| geometry | B | T | " + " | ".join(UNIT_NAMES) + " |",
        "|---|---|---|" + "---|" * len(UNIT_NAMES),
    ]
    for geo in geos:
        u = cell[geo, "units"]
        lines.append(
            f"| {geo} | {dims[geo][0]} | {dims[geo][1]} | "
            + " | ".join(f"{u[k] * 1e3:.1f}" for k in UNIT_NAMES)
            + " |"
        )

    if results["memory"]:
        lines += [
            "",
            f"### Peak memory (1x geometry, fresh process per run, {args.memory_steps} steps)",
            "",
            (
                "MB. Peak: the process's RSS high-water mark (`os.wait4`). Above built: peak minus the RSS right "
                "after the trainer was built (what training adds: activations, optimizer states, generation cache). "
                "Above pre-build: peak minus the RSS before the trainer was built (adds the policy, reference and "
                "critic weights). Model state: fp32 weights held plus the gradients and two AdamW moments of the "
                "trained parameters, the part that dominates at scale (its ratio is the memory 'ideal' above). The "
                "step times of these one-trainer processes are the cross-check of the in-turn timing (noisier: each "
                "process sees the machine alone)."
            ),
            "",
            (
                "| trainer | peak RSS | above built | above pre-build | params held | params trained | model state "
                "(MB) | step CPU (ms) | step wall (ms) |"
            ),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in args.trainers:
            m, c = cell["memory", name], cell[base, name]
            lines.append(
                f"| {TRAINERS[name].label} | {m['peak_rss_mb']:.0f} | {m['peak_over_built_mb']:.0f} | "
                f"{m['peak_over_before_mb']:.0f} | {c['params_held']:,} | {c['params_trained']:,} | "
                f"{4 * c['model_state'] / 2**20:.0f} | {m['step_cpu_s'] * 1e3:.0f} | {m['step_time_s'] * 1e3:.0f} |"
            )

    pairs = [(a, b) for a, b in (("rloo", "trl_rloo"), ("rloo_tricks", "trl_rloo"), ("reinforce_pp", "trl_grpo"),
                                 ("ppo_max", "reinforce_pp")) if {a, b} <= have]  # fmt: skip
    if len(geos) > 1 and pairs:
        lines += [
            "",
            "### Growth with completion length T and batch size B",
            "",
            (
                "First rows: CPU-time ratio of each trainer to its reference at each geometry (flat = our code adds "
                "nothing that grows faster than the model's work); `ideal` is the same ratio from the unit costs. "
                "Then each trainer's CPU step time relative to its own 1x time, against the model's work (unit "
                "costs) at the same scale."
            ),
            "",
            "| | " + " | ".join(geos) + " |",
            "|---|" + "---|" * len(geos),
        ]
        for a, b in pairs:
            values = [f"{ratio(cell, geo, a, b):.3f}" for geo in geos]
            lines.append(f"| {TRAINERS[a].label} / {TRAINERS[b].label} | " + " | ".join(values) + " |")
            values = [f"{cell[geo, a]['ideal_s'] / cell[geo, b]['ideal_s']:.3f}" for geo in geos]
            lines.append("| ideal | " + " | ".join(values) + " |")
        for name in args.trainers:
            values = [f"{cell[geo, name]['step_cpu_s'] / cell[base, name]['step_cpu_s']:.2f}" for geo in geos]
            lines.append(f"| {TRAINERS[name].label}: CPU step / its 1x | " + " | ".join(values) + " |")
        for unit, text in (("gen", "generate"), ("fb", "policy forward+backward")):
            values = [f"{cell[geo, 'units'][unit] / cell[base, 'units'][unit]:.2f}" for geo in geos]
            lines.append(f"| model work: {text} / its 1x | " + " | ".join(values) + " |")

    lines += ["", "### Trainers", ""]
    for name in args.trainers:
        spec = TRAINERS[name]
        passes = ", ".join(f"{count} {kind}" for kind, count in spec.passes.items())
        lines.append(f"- **{spec.label}**: {spec.description}. Ideal passes per step: gen, {passes}.")
    results["verdicts"] = verdicts
    return "\n".join(lines) + "\n"


def machine_summary() -> str:
    return f"{os.cpu_count()} CPU cores ({cpu_model()}), load average {os.getloadavg()[0]:.1f} at the end"


def versions() -> str:
    from importlib.metadata import version

    return f"Python {platform.python_version()}, " + ", ".join(
        f"{name} {version(name)}" for name in ("torch", "transformers", "trl")
    )
