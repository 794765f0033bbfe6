"""Learning efficiency: mean task reward against samples seen, per algorithm, over several seeds, with the spread.

Every run trains the kit's tiny model on a kit task (default ``target_letter``: reward 1 only when the one-letter
completion is the asked letter, so the signal is sparse at the start) with the same sample budget: the same number of
completions per step and of steps, the same learning rate, temperature, completion cap and KL coefficient (0.05).
The algorithms differ only in how they turn those completions into a gradient:

- RLOO k=4 and RLOO k=2: the leave-one-out baseline over k samples per prompt (64/k prompts per step);
- REINFORCE with a moving-average baseline, one sample per prompt (64 prompts per step);
- PPO-max, one sample per prompt, its critic initialised from the policy (critic learning rate ``--critic-lr``);
- REINFORCE++ (optional), one sample per prompt.

Each run is a child process running ``trl-basics train`` (the command is printed and saved), interleaved seed by seed
in a rotated order. Reported per algorithm: the area under the reward curve (mean training reward over all steps),
the final reward (mean over the last fifth of the steps), and the held-out success rate of the final policy (256
prompts the training never saw, sampled at temperature 1). The plot shows the mean over seeds of the training reward
(smoothed over ``--smooth`` steps) with the min-max band over seeds.

    OMP_NUM_THREADS=1 python benchmarks/learning.py --seeds 0 1 2 3 4 --plot docs/benchmarks_learning.png
    OMP_NUM_THREADS=1 python benchmarks/learning.py --quick --output /tmp/learning.md        # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS_MARKERS = ("<!-- learning-table:start -->", "<!-- learning-table:end -->")

# label: (algorithm of trl_basics.algorithms, completions per prompt, extra flags, description)
RUNS = {
    "rloo_k4": ("rloo", 4, ["--beta", "0.05"], "RLOO, k=4 (leave-one-out baseline)"),
    "rloo_k2": ("rloo", 2, ["--beta", "0.05"], "RLOO, k=2"),
    "reinforce_ma": ("reinforce_ma", 1, ["--beta", "0.05"], "REINFORCE with moving-average baseline, k=1"),
    "ppo_max": ("ppo_max", 1, ["--critic_init", "policy"], "PPO-max (critic from the policy), k=1"),
    "reinforce_pp": ("reinforce_pp", 1, ["--kl_coef", "0.05"], "REINFORCE++, k=1"),
}
DEFAULT_RUNS = ["rloo_k4", "rloo_k2", "reinforce_ma", "ppo_max", "reinforce_pp"]


def run_one(label: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    from trl_basics.cli.experiments import ExperimentArguments, run_child, task_success_rate, train_command

    algorithm, k, extra, _ = RUNS[label]
    if algorithm == "ppo_max":
        extra = [*extra, "--critic_learning_rate", str(args.critic_lr)]
    experiment = ExperimentArguments(
        task=args.task, seed=seed, max_steps=args.steps, completions_per_step=args.completions_per_step,
        num_generations=k, max_completion_length=args.max_completion_length, learning_rate=args.learning_rate,
        eval_prompts=args.eval_prompts, model_name_or_path=args.model_dir,
    )  # fmt: skip
    run_dir = out / f"{label}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = train_command(algorithm, experiment, run_dir, extra)
    (run_dir / "command.txt").write_text(shlex.join(command) + "\n")
    code, peak_mb, wall = run_child(command, run_dir / "train.log")
    if code != 0:
        tail = "".join((run_dir / "train.log").read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"{label} seed {seed} failed with exit code {code}:\n{tail}")
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    key = f"rewards/{_reward_name(args.task)}/mean"
    rewards = [entry[key] for entry in history if key in entry]
    success = task_success_rate(str(run_dir), experiment) if args.eval_prompts else float("nan")
    return {
        "label": label, "seed": seed, "rewards": rewards, "success_rate": success, "peak_rss_mb": peak_mb,
        "wall_s": wall, "command": shlex.join(command),
    }  # fmt: skip


def _reward_name(task: str) -> str:
    from trl_basics.kit.tasks import get_task

    return get_task(task).reward_func.__name__


def auc(rewards: list[float]) -> float:
    return statistics.fmean(rewards)


def final(rewards: list[float]) -> float:
    return statistics.fmean(rewards[-max(1, len(rewards) // 5) :])


def smooth(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1) : i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


def plot(runs: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for label in args.algorithms:
        curves = [smooth(r["rewards"], args.smooth) for r in runs if r["label"] == label]
        if not curves:
            continue
        steps = min(len(c) for c in curves)
        x = [(i + 1) * args.completions_per_step for i in range(steps)]
        columns = [[c[i] for c in curves] for i in range(steps)]
        mean = [statistics.fmean(col) for col in columns]
        (line,) = ax.plot(x, mean, label=f"{RUNS[label][3]} ({len(curves)} seeds)")
        ax.fill_between(x, [min(col) for col in columns], [max(col) for col in columns], alpha=0.2,
                        color=line.get_color(), linewidth=0)  # fmt: skip
    ax.set_xlabel("completions seen")
    ax.set_ylabel(f"training reward ({args.smooth}-step moving average)")
    ax.set_title(f"kit:{args.task}, kit tiny model: mean over seeds, band = min to max")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ordering(summary: dict, runs: list[dict], a: str, b: str, metric) -> str:
    """Whether ``a`` >= ``b`` in the mean over seeds, and in how many seeds."""
    if a not in summary or b not in summary:
        return "n/a"
    seeds = sorted({r["seed"] for r in runs})
    value = {(r["label"], r["seed"]): metric(r) for r in runs}
    wins = sum(value[a, s] >= value[b, s] for s in seeds if (a, s) in value and (b, s) in value)
    mean_a = statistics.fmean(value[a, s] for s in seeds if (a, s) in value)
    mean_b = statistics.fmean(value[b, s] for s in seeds if (b, s) in value)
    verdict = "holds" if mean_a >= mean_b else "does not hold"
    return f"{verdict}: {mean_a:.3f} vs {mean_b:.3f} (in {wins} of {len(seeds)} seeds)"


def render(args: argparse.Namespace, runs: list[dict], command: str, wall: float) -> str:
    summary = {}
    for label in args.algorithms:
        mine = [r for r in runs if r["label"] == label]
        if not mine:
            continue
        aucs = [auc(r["rewards"]) for r in mine]
        finals = [final(r["rewards"]) for r in mine]
        successes = [r["success_rate"] for r in mine]
        summary[label] = {
            "auc": (statistics.fmean(aucs), min(aucs), max(aucs)),
            "final": (statistics.fmean(finals), min(finals), max(finals)),
            "success": (statistics.fmean(successes), min(successes), max(successes)),
            "seeds": len(mine),
        }
    budget = args.steps * args.completions_per_step
    lines = [
        f"Command: `{command}`",
        "",
        (
            f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, {wall / 60:.1f} min. Task kit:{args.task}, "
            f"kit tiny model (the same initial weights for every run), {args.steps} steps x "
            f"{args.completions_per_step} completions = {budget} completions per run, learning rate "
            f"{args.learning_rate} (constant), temperature 1, at most {args.max_completion_length} tokens, KL "
            f"coefficient 0.05 for every algorithm, PPO-max critic "
            f"learning rate {args.critic_lr}; seeds {', '.join(str(s) for s in args.seeds)} (data order and sampling)."
        ),
        "",
        (
            "| algorithm | seeds | AUC: mean training reward over all steps | final: last fifth of the steps | "
            "held-out success rate |"
        ),
        "|---|---|---|---|---|",
    ]
    for label, s in summary.items():
        cells = [f"{s[k][0]:.3f} [{s[k][1]:.3f}, {s[k][2]:.3f}]" for k in ("auc", "final", "success")]
        lines.append(f"| {RUNS[label][3]} | {s['seeds']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean over seeds [min, max]. Ordering checks (mean over seeds; seeds where it holds):",
        "",
    ]
    for a, b in (("rloo_k4", "rloo_k2"), ("rloo_k2", "reinforce_ma"), ("rloo_k4", "ppo_max"), ("rloo_k2", "ppo_max")):
        if a in summary and b in summary:
            by_auc = ordering(summary, runs, a, b, lambda r: auc(r["rewards"]))
            by_final = ordering(summary, runs, a, b, lambda r: final(r["rewards"]))
            lines.append(f"- {RUNS[a][3]} ≥ {RUNS[b][3]}: AUC {by_auc}; final {by_final}")
    return "\n".join(lines) + "\n", summary


def update_docs(path: Path, table: str) -> None:
    text = path.read_text()
    start, end = DOCS_MARKERS
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} block to replace")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{table}{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke test: two algorithms, one seed, a few steps.")
    parser.add_argument("--algorithms", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--task", default="target_letter")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--completions-per-step", type=int, default=64)
    parser.add_argument("--max-completion-length", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--critic-lr", type=float, default=3e-3, help="PPO-max's critic learning rate.")
    parser.add_argument(
        "--eval-prompts", type=int, default=256, help="Held-out prompts for the success rate (0: skip)."
    )
    parser.add_argument("--smooth", type=int, default=10, help="Moving-average window of the plotted curves.")
    parser.add_argument("--output", default=str(HERE / "results" / "learning.md"))
    parser.add_argument("--plot", default=None, help="PNG of the curves (default: next to --output).")
    parser.add_argument("--update-docs", default=None, help="Replace the marked block of this Markdown file.")
    parser.add_argument("--keep-runs", default=None, help="Keep the run folders here (default: a temporary folder).")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.eval_prompts, args.smooth = 3, [0], 0, 1
        if "--algorithms" not in argv:
            args.algorithms = ["rloo_k2", "reinforce_ma"]

    from trl_basics.kit.model import save_tiny_model

    started = time.perf_counter()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep_runs) if args.keep_runs else Path(tmp)
        args.model_dir = str(save_tiny_model(out / "initial-model"))  # the same starting policy for every run
        total, done = len(args.seeds) * len(args.algorithms), 0
        for index, seed in enumerate(args.seeds):
            shift = index % len(args.algorithms)
            for label in [*args.algorithms[shift:], *args.algorithms[:shift]]:
                t0 = time.perf_counter()
                run = run_one(label, seed, args, out)
                runs.append(run)
                done += 1
                print(
                    f"[{done}/{total} {time.perf_counter() - started:5.0f}s] seed {seed} {label:13s} AUC "
                    f"{auc(run['rewards']):.3f} final {final(run['rewards']):.3f} held-out success "
                    f"{run['success_rate']:.3f} ({time.perf_counter() - t0:.0f}s)",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
    wall = time.perf_counter() - started
    command = shlex.join(["OMP_NUM_THREADS=1", "python", "benchmarks/learning.py", *argv])
    markdown, _ = render(args, runs, command, wall)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    output.with_suffix(".json").write_text(
        json.dumps({"args": {k: v for k, v in vars(args).items()}, "command": command, "runs": runs}, indent=2)
    )
    plot(runs, args, Path(args.plot) if args.plot else output.with_suffix(".png"))
    if args.update_docs:
        update_docs(Path(args.update_docs), markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
