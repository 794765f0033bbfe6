"""The report of `trl-basics reproduce`: one claims table per paper (report.md, report.html, claims.json), and each
paper's runs through `compare`'s report (`report.write_report`), with every curve averaged over seeds."""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import platform
import statistics
from pathlib import Path

from . import claim_metrics as m
from .assessment import Baseline, RunResult
from .claim_stats import RULE_TEXT, difference_interval, mean_interval, verdict
from .claims import CLAIMS, NOISE_LEVELS, PAPERS, RUNS, Claim, Settings, runs_for
from .experiments import task_reward_name
from .report import write_report
from .tables import markdown_table

COLUMNS = ("#", "claim (paper, where)", "paper reported", "measured: mean ± 95% CI over seeds (n)", "test", "verdict")


def mean_run(key: str, runs: list[RunResult]) -> RunResult:
    """A run whose every logged metric is the mean over ``runs`` (the seeds) at each step."""
    ok = [run for run in runs if run.failed is None]
    label = RUNS[key].label
    if not ok:
        return RunResult(label, RUNS[key].algorithm, [], 0.0, 0.0, failed=runs[0].failed if runs else "no run")
    steps: dict[int, dict[str, list[float]]] = {}
    for run in ok:
        for entry in run.log_history:
            if "step" not in entry:
                continue
            slot = steps.setdefault(entry["step"], {})
            for name, value in entry.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    slot.setdefault(name, []).append(float(value))
    history = [{name: statistics.fmean(vs) for name, vs in slot.items()} | {"step": step} for step, slot in sorted(steps.items())]
    success = [run.success_rate for run in ok if run.success_rate is not None]
    return RunResult(
        label, RUNS[key].algorithm, history, max(r.peak_rss_mb for r in ok), statistics.fmean(r.wall_seconds for r in ok),
        success_rate=statistics.fmean(success) if success else None, eval_prompts=ok[0].eval_prompts,
    )  # fmt: skip


def judge(claim: Claim, by_seed: dict[int, dict[str, RunResult]], settings: Settings) -> dict:
    a = {seed: claim.a(runs, settings) for seed, runs in by_seed.items()}
    if claim.b is None:
        interval, test = mean_interval(list(a.values())), "one-sample t over seeds"
        b = {}
    else:
        b = {seed: claim.b(runs, settings) for seed, runs in by_seed.items()}
        interval, test = difference_interval(a, b)
    rule = {"directional": "interval of d above 0", "non_inferiority": f"interval above -{claim.margin * claim.scale:g}{claim.unit}",
            "upper_bound": f"interval below {claim.margin * claim.scale:g}{claim.unit}"}[claim.kind]  # fmt: skip
    measured = interval.text(claim.scale, 3 if claim.scale == 1 else 1, claim.unit)
    counted = interval.n
    if counted < len(by_seed):
        measured += f"; {len(by_seed) - counted} of {len(by_seed)} seeds without a value"
    if claim.note:
        measured += f" ({claim.note})"
    if claim.extra is not None:
        measured += "; " + claim.extra(by_seed, settings)
    return {
        "number": claim.number, "claim": claim.text, "reported": claim.reported, "measure": claim.measure,
        "measured": measured, "mean": _finite(interval.mean), "ci_low": _finite(interval.low),
        "ci_high": _finite(interval.high), "n": counted, "test": f"{test}; {claim.kind.replace('_', '-')}: {rule}",
        "verdict": verdict(interval, claim.kind, claim.margin), "values_a": _per_seed(a), "values_b": _per_seed(b),
    }  # fmt: skip


def _finite(x: float) -> float | None:
    return x if isinstance(x, float) and math.isfinite(x) else None


def _per_seed(values: dict[int, float]) -> dict[str, float | None]:
    return {str(seed): _finite(float(v)) for seed, v in values.items()}


def _row(result: dict) -> dict[str, str]:
    return dict(zip(COLUMNS, (
        str(result["number"]), result["claim"], result["reported"], f"{result['measure']}: {result['measured']}",
        result["test"], result["verdict"],
    ), strict=True))  # fmt: skip


def reward_kl_plot(means: list[RunResult], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for run in means:
        kl = dict(m.kl_series(run))
        reward = dict(zip(run.reward_steps, run.rewards, strict=True))
        steps = [s for s in sorted(kl) if s in reward]
        if steps:
            ax.plot([kl[s] for s in steps], [reward[s] for s in steps], marker=".", label=run.label)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("KL to the reference, per token (k1), mean over seeds")
    ax.set_ylabel("training reward, mean over seeds")
    ax.set_title("reward against KL (claim 7)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reproduce_report(papers, by_seed, args, pipelines, out: Path, command: str, invocations: list[dict]) -> Path:
    gold_metric = f"rewards/{task_reward_name(args.task)}/mean"
    settings = Settings(gold_metric=gold_metric, completions_per_step=args.completions_per_step)
    main = pipelines.get("main", {})
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    run_wall = sum(r.wall_seconds for runs in by_seed.values() for r in runs.values())
    setup = (
        f"Kit pipeline on kit:{args.task}: tiny model → SFT ({args.sft_steps} steps; task success "
        f"{100 * main.get('sft_success', float('nan')):.1f}%) → reward model ({args.reward_model_steps} steps; held-out "
        f"pair accuracy {100 * main.get('reward_accuracy', float('nan')):.1f}%), both built once with seed 0. Every RL run "
        f"starts from that SFT model and optimises the reward model's score; the task's verifiable reward is logged "
        f"beside it with weight 0 (the gold measure). {args.seeds} seed(s) per configuration; every run: "
        f"{args.max_steps} steps × {args.completions_per_step} completions (the same sample budget; RLOO k=2 keeps the "
        f"prompts per step, so it generates half), {args.num_generations} completions per prompt, learning rate "
        f"{args.learning_rate:g}, completions of at most {args.max_completion_length} tokens, task success on "
        f"{args.eval_prompts} held-out prompts. Claim 9 uses kit:target_letter with {args.small_prompts} training "
        f"prompts, optimising its verifiable reward from an SFT model of that task. Reward noise (claim 4): Gaussian, "
        f"σ ∈ {{{', '.join(f'{s:g}' for s in NOISE_LEVELS)}}} on the reward model's score."
    )  # fmt: skip
    wall = invocations[-1]["wall_seconds"]
    history = "; ".join(
        f"{i['ended']}: {i['runs_trained']} run(s) trained in {i['wall_seconds'] / 60:.1f} min" for i in invocations
    )
    timing = (
        f"Machine: {machine}. Date: {date}. Wall time of this invocation: {wall / 60:.1f} min; the runs themselves "
        f"took {run_wall / 60:.1f} min. Invocations on this folder (a run recorded by an earlier one is reused, not "
        f"trained again): {history}."
    )
    data = {"command": command, "date": date, "machine": machine, "wall_seconds": wall, "invocations": invocations, "rule": RULE_TEXT,
            "setup": setup, "seeds": args.seeds, "quick": args.quick, "papers": {}}  # fmt: skip
    md = [f"# The papers' claims, measured{' (quick smoke test: structure only)' if args.quick else ''}", "",
          "Produced by:", "", f"```\n{command}\n```", "", setup, "", timing, "", RULE_TEXT, ""]  # fmt: skip
    body_html = []
    for paper in papers:
        results = [judge(claim, by_seed, settings) for claim in CLAIMS if claim.paper == paper]
        keys = [config.key for config in runs_for([paper])]
        means = [mean_run(key, [runs[key] for runs in by_seed.values() if key in runs]) for key in keys]
        folder = out / paper
        baseline = Baseline("SFT (start of RL)", main["sft_success"], args.eval_prompts) if "sft_success" in main else None
        main_means = [run for run, key in zip(means, keys, strict=True) if RUNS[key].pipeline == "main"]
        write_report(
            main_means, folder, f"{PAPERS[paper]}: the runs, mean over {args.seeds} seed(s)", command=command,
            task_metric=gold_metric, baseline=baseline, length_cap=args.max_completion_length,
            preamble="Every curve and value is the mean over seeds of one configuration; the claims table is in "
            "../report.md.",
        )  # fmt: skip
        plots = sorted(p.name for p in folder.glob("*.png"))
        if paper == "reinforce_pp" and reward_kl_plot(main_means, folder / "reward_vs_kl.png"):
            plots.append("reward_vs_kl.png")
        counts = {v: sum(r["verdict"] == v for r in results) for v in ("holds", "does not hold", "inconclusive at this scale")}
        data["papers"][paper] = {"title": PAPERS[paper], "claims": results, "verdict_counts": counts,
                                 "runs_report": f"{paper}/report.md"}  # fmt: skip
        rows = [_row(r) for r in results]
        md += [f"## {PAPERS[paper]}", "", markdown_table(rows), "",
               "Verdicts: " + ", ".join(f"{v}: {n}" for v, n in counts.items()) + f". Runs and curves: [{paper}/report.md]({paper}/report.md).", ""]  # fmt: skip
        md += [f"![{p}]({paper}/{p})" for p in plots] + [""]
        table = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
        header = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        images = "".join(f'<p><img src="{paper}/{p}" alt="{p}"></p>' for p in plots)
        body_html.append(f"<h2>{html.escape(PAPERS[paper])}</h2><table><tr>{header}</tr>{table}</table>{images}")
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "claims.json").write_text(json.dumps(data, indent=2, allow_nan=False))
    (out / "report.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>The papers' claims, measured</title>"
        "<style>body{font-family:sans-serif;max-width:80em;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:.3em .6em;vertical-align:top}table{border-collapse:collapse}</style></head><body>"
        f"<h1>The papers' claims, measured</h1><p>Produced by:</p><pre>{html.escape(command)}</pre>"
        f"<p>{html.escape(setup)}</p><p>{html.escape(timing)}</p><p>{html.escape(RULE_TEXT)}</p>"
        + "".join(body_html) + "</body></html>"
    )
    return out / "report.md"


__all__ = ["COLUMNS", "judge", "mean_run", "reward_kl_plot", "write_reproduce_report"]
