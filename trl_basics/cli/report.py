"""Reports of `demo`, `compare` and `ablate`: a Markdown page, an HTML page, summary.json and PNG plots against step.

Every run's row says what its final policy does, not only how its training reward moved:

- *final reward*: the training reward of the last step;
- *task success*: the final policy's share of held-out prompts solved, with its difference to the starting (SFT)
  policy and the binomial standard error of that difference;
- *collapsed*: the collapse alarm's ``collapse/alarm`` metric (every trl_basics trainer logs it), and the report's
  own check for a reward that fell back after its rise;
- *rise test*: Welch's t between the first and last 20% of steps' training rewards;
- *verdict*: ✓ only if the rise is significant, the final policy is not below the starting policy, and nothing
  collapsed.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

RISE_T_THRESHOLD = 3.0
RISE_WINDOW_FRACTION = 0.2
RISE_MIN_STEPS = 6  # two windows of at least 3 steps
DROP_FRACTION = 0.6  # the report's own collapse check: the final reward lost more than this share of the rise
K1_KEY = "kl_to_ref/k1_token_mean"
RLOO_PARENT_ALGORITHMS = ("rloo", "reinforce_ma")  # TRL RLOO's own `kl` metric is k1 per token
MEMORY_BUILT_KEY = "memory/rss_built_mb"


def plot_specs(task_metric: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """The curves every report draws: (file stem, title, metric names in order of preference)."""
    specs = [("reward", "training reward (what the algorithm optimises)", ("reward",))]
    if task_metric:
        specs.append(("task_reward", "task reward (verifiable)", (task_metric,)))
    specs += [
        ("kl", "KL to the reference, per token (k1 = mean log-ratio of the sampled tokens)", (K1_KEY, "kl")),
        ("length", "mean completion length (tokens)", ("completions/mean_length",)),
        ("perplexity", "perplexity of the sampled completions", ("perplexity",)),
    ]
    return specs


@dataclass
class RunResult:
    label: str
    algorithm: str
    log_history: list[dict]
    peak_rss_mb: float
    wall_seconds: float
    success_rate: float | None = None
    extras: dict = field(default_factory=dict)
    failed: str | None = None  # why the run failed; its other fields are then empty
    eval_prompts: int | None = None  # prompts the success rate was measured on

    def series(self, names: tuple[str, ...]) -> tuple[str | None, list[tuple[int, float]]]:
        """The first metric of ``names`` this run logged, as (step, value) pairs."""
        for name in names:
            points = [(e["step"], e[name]) for e in self.log_history if name in e and "step" in e]
            if points:
                return name, points
        return None, []

    @property
    def step_times(self) -> list[float]:
        return [e["step_time"] for e in self.log_history if "step_time" in e]

    @property
    def rewards(self) -> list[float]:
        return [e["reward"] for e in self.log_history if "reward" in e]

    @property
    def reward_steps(self) -> list[int]:
        return [e.get("step", i + 1) for i, e in enumerate(e for e in self.log_history if "reward" in e)]

    @property
    def rss_built_mb(self) -> float | None:
        values = [e[MEMORY_BUILT_KEY] for e in self.log_history if MEMORY_BUILT_KEY in e]
        return values[0] if values else None

    @property
    def alarm_step(self) -> int | None:
        """The first step at which the collapse alarm fired (``collapse/alarm`` > 0), if it did."""
        return next((e["step"] for e in self.log_history if e.get("collapse/alarm", 0) > 0 and "step" in e), None)


@dataclass(frozen=True)
class Baseline:
    """The policy RL starts from (the demo's SFT model), with its task success on the same held-out prompts."""

    label: str
    success_rate: float
    eval_prompts: int


def reward_rise(rewards: list[float]) -> tuple[float, float, float]:
    """(first-window mean, last-window mean, Welch t) over the first and last 20% of steps (at least 3 each).

    The reward "rises clearly" when t ≥ 3: the last steps' mean reward is more than three standard errors above the
    first steps', which noise between steps of a fixed policy does not produce. NaN for fewer than 6 steps.
    """
    window = max(3, int(len(rewards) * RISE_WINDOW_FRACTION))
    if len(rewards) < 2 * window:
        return float("nan"), float("nan"), float("nan")
    first, last = rewards[:window], rewards[-window:]
    mean_first, mean_last = statistics.fmean(first), statistics.fmean(last)
    standard_error = math.sqrt(statistics.variance(first) / window + statistics.variance(last) / window)
    t = (
        (mean_last - mean_first) / standard_error
        if standard_error > 0
        else math.copysign(math.inf, mean_last - mean_first)
    )
    return mean_first, mean_last, t


def rise_is_significant(t: float) -> bool:
    return not math.isnan(t) and t >= RISE_T_THRESHOLD


def format_t(t: float) -> str:
    """t rounded towards zero, so the shown value never crosses the threshold the test uses (2.996 shows 2.99)."""
    if math.isinf(t):
        return "∞" if t > 0 else "-∞"
    return f"{math.trunc(t * 100) / 100:.2f}"


def reward_drop_after_rise(rewards: list[float]) -> int | None:
    """The report's own collapse check: the index of the final step if its reward lost most of a clear rise.

    The rise is the best mean over a window of 20% of the steps (at least 3) minus the first window's mean; it is
    "clear" when it exceeds three standard deviations of the steps in that best window. The final step "lost most
    of it" when its reward is below best - 0.6 × rise.
    """
    window = max(3, int(len(rewards) * RISE_WINDOW_FRACTION))
    if len(rewards) < 2 * window:
        return None
    means = [statistics.fmean(rewards[i : i + window]) for i in range(len(rewards) - window + 1)]
    best_index = max(range(len(means)), key=means.__getitem__)
    best, start = means[best_index], means[0]
    noise = statistics.stdev(rewards[best_index : best_index + window])
    rise = best - start
    if rise > 3 * noise and rewards[-1] < best - DROP_FRACTION * rise:
        return len(rewards) - 1
    return None


@dataclass
class Assessment:
    """Everything the table and summary.json say about one run."""

    final_reward: float | None
    best_step: int | None
    best_reward: float | None
    rise: tuple[float, float, float]
    task_success: float | None
    delta: float | None
    delta_se: float | None
    below_baseline: bool
    alarm_step: int | None
    drop_step: int | None
    failed: str | None

    @property
    def collapsed(self) -> bool:
        return self.alarm_step is not None or self.drop_step is not None

    @property
    def passed(self) -> bool:
        return (
            self.failed is None
            and rise_is_significant(self.rise[2])
            and not self.below_baseline
            and not self.collapsed
        )

    def verdict(self) -> str:
        if self.failed is not None:
            return f"failed: {self.failed}"
        if self.passed:
            return "✓"
        reasons = []
        if not rise_is_significant(self.rise[2]):
            reasons.append("no clear rise" if not math.isnan(self.rise[2]) else "too short to test")
        if self.below_baseline:
            reasons.append("below SFT")
        if self.collapsed:
            reasons.append("collapsed")
        return "✗ " + ", ".join(reasons)


def assess(run: RunResult, baseline: Baseline | None = None) -> Assessment:
    rewards, steps = run.rewards, run.reward_steps
    best = max(range(len(rewards)), key=rewards.__getitem__) if rewards else None
    delta = delta_se = None
    below = False
    if baseline is not None and run.success_rate is not None:
        n, n0 = run.eval_prompts or baseline.eval_prompts, baseline.eval_prompts
        p, p0 = run.success_rate, baseline.success_rate
        delta = p - p0
        delta_se = math.sqrt(p * (1 - p) / n + p0 * (1 - p0) / n0)
        below = delta < 0
    drop = reward_drop_after_rise(rewards)
    return Assessment(
        final_reward=rewards[-1] if rewards else None,
        best_step=steps[best] if best is not None else None,
        best_reward=rewards[best] if best is not None else None,
        rise=reward_rise(rewards),
        task_success=run.success_rate,
        delta=delta,
        delta_se=delta_se,
        below_baseline=below,
        alarm_step=run.alarm_step,
        drop_step=steps[drop] if drop is not None else None,
        failed=run.failed,
    )


def _rise_cell(rewards: list[float], rise: tuple[float, float, float]) -> str:
    first, last, t = rise
    if math.isnan(t):
        return f"n/a: needs ≥ {RISE_MIN_STEPS} steps, has {len(rewards)}"
    sign = "≥" if rise_is_significant(t) else "<"
    return f"{first:.2f} → {last:.2f}, t = {format_t(t)} ({sign} {RISE_T_THRESHOLD:g})"


def _collapse_cell(a: Assessment) -> str:
    parts = []
    if a.alarm_step is not None:
        parts.append(f"alarm at step {a.alarm_step}")
    if a.drop_step is not None:
        parts.append(f"reward fell back at step {a.drop_step}")
    return "yes: " + "; ".join(parts) if parts else "no"


def table_rows(runs: list[RunResult], baseline: Baseline | None = None) -> list[dict[str, str]]:
    rows = []
    columns = ["run", "final reward", "best step (reward)", "reward rise: first → last 20% (Welch t)",
               "task success", "collapsed", "verdict", "median step time (s)", "memory: training adds (MB)",
               "wall time (s)"]  # fmt: skip
    if baseline is not None:
        row = dict.fromkeys(columns, "—")
        row.update(
            {"run": baseline.label, "task success": f"{100 * baseline.success_rate:.1f}%", "verdict": "baseline"}
        )
        rows.append(row)
    for run in runs:
        a = assess(run, baseline)
        row = dict.fromkeys(columns, "—")
        row["run"], row["verdict"] = run.label, a.verdict()
        if run.failed is None:
            task = "—" if a.task_success is None else f"{100 * a.task_success:.1f}%"
            if a.delta is not None:
                task += f" (Δ {100 * a.delta:+.1f} ± {100 * a.delta_se:.1f} pp)"
            built = run.rss_built_mb
            row.update(
                {
                    "final reward": "—" if a.final_reward is None else f"{a.final_reward:.3f}",
                    "best step (reward)": "—" if a.best_step is None else f"{a.best_step} ({a.best_reward:.3f})",
                    "reward rise: first → last 20% (Welch t)": _rise_cell(run.rewards, a.rise),
                    "task success": task,
                    "collapsed": _collapse_cell(a),
                    "median step time (s)": f"{statistics.median(run.step_times):.3f}" if run.step_times else "—",
                    "memory: training adds (MB)": "—" if built is None else f"{max(run.peak_rss_mb - built, 0):.0f}",
                    "wall time (s)": f"{run.wall_seconds:.0f}",
                }
            )
        rows.append(row)
    return rows


def summary(runs: list[RunResult], baseline: Baseline | None = None) -> dict:
    """What summary.json holds: per run the final reward, task success, SFT's, collapse and the verdict."""
    out = {"sft_task_success": baseline.success_rate if baseline else None, "runs": {}}
    for run in runs:
        a = assess(run, baseline)
        first, last, t = a.rise

        def finite(x):
            return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x

        out["runs"][run.label] = {
            "algorithm": run.algorithm,
            "final_reward": a.final_reward,
            "final_task_success": a.task_success,
            "sft_task_success": baseline.success_rate if baseline else None,
            "task_success_delta": a.delta,
            "task_success_delta_se": a.delta_se,
            "collapsed": a.collapsed,
            "collapse_alarm_step": a.alarm_step,
            "reward_drop_step": a.drop_step,
            "best_step": a.best_step,
            "reward_first": finite(first),
            "reward_last": finite(last),
            "rise_t": finite(t) if not (isinstance(t, float) and math.isinf(t)) else (1e9 if t > 0 else -1e9),
            "rise_significant": rise_is_significant(t),
            "verdict": a.verdict(),
            "passed": a.passed,
            "failed": run.failed,
            "peak_rss_mb": run.peak_rss_mb,
            "rss_built_mb": run.rss_built_mb,
            "wall_seconds": run.wall_seconds,
        }
    return out


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[column].replace("|", "\\|") for column in header) + " |" for row in rows]
    return "\n".join(lines)


def text_table(rows: list[dict[str, str]], columns: tuple[str, ...] | None = None) -> str:
    """A plain-text table for the terminal (a chosen subset of columns)."""
    if not rows:
        return ""
    header = [c for c in (columns or tuple(rows[0])) if c in rows[0]]
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in header]
    line = "  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True))
    body = ["  ".join(r[c].ljust(w) for c, w in zip(header, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body])


TERMINAL_COLUMNS = ("run", "final reward", "reward rise: first → last 20% (Welch t)", "task success", "collapsed",
                    "verdict")  # fmt: skip


def _kl_points(run: RunResult) -> tuple[str | None, list[tuple[int, float]]]:
    """The run's per-token KL as k1, whatever its own penalty uses; otherwise its own metric, named."""
    _, points = run.series((K1_KEY,))
    if points:
        return "k1", points
    _, points = run.series(("kl",))
    if points:
        # TRL's RLOO logs k1 per token as `kl`; TRL's GRPO logs its loss estimator, k3.
        return ("k1" if run.algorithm in RLOO_PARENT_ALGORITHMS else "k3 (TRL's kl)"), points
    return None, []


def draw_plots(
    runs: list[RunResult],
    out_dir: Path,
    task_metric: str | None = None,
    length_cap: int | None = None,
    not_logged: dict[str, list[str]] | None = None,
) -> list[Path]:
    """Draw every plot of [`plot_specs`]; runs without a plot's metric go into ``not_logged[stem]``."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    runs = [run for run in runs if run.failed is None]
    paths = []
    for stem, title, names in plot_specs(task_metric):
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        missing = []
        for run in runs:
            if stem == "kl":
                estimator, points = _kl_points(run)
                label = run.label if estimator == "k1" else f"{run.label} ({estimator})"
            else:
                name, points = run.series(names)
                label = f"{run.label} ({name})" if name != names[0] else run.label
            if not points:
                missing.append(run.label)
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=label, linewidth=1.5)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        for label in missing:  # listed, not silently dropped (e.g. KL when the run switched KL shaping off)
            ax.plot([], [], linestyle="none", marker="x", color="grey", label=f"{label}: not logged")
        if missing and not_logged is not None:
            not_logged[stem] = missing
        if stem == "length" and length_cap is not None:
            ax.axhline(length_cap, color="black", linestyle="--", linewidth=1, label=f"cap ({length_cap} tokens)")
            ax.set_ylim(top=length_cap * 1.08)
        ax.set_xlabel("step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(
    runs: list[RunResult],
    out_dir: Path,
    title: str,
    preamble: str = "",
    command: str = "",
    task_metric: str | None = None,
    baseline: Baseline | None = None,
    length_cap: int | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write report.md, report.html, summary.json and the plots into ``out_dir``; return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    not_logged: dict[str, list[str]] = {}
    plots = draw_plots(runs, out_dir, task_metric, length_cap, not_logged)
    rows = table_rows(runs, baseline)
    notes = list(notes or [])
    for stem, labels in not_logged.items():
        notes.append(
            f"*{stem}* plot: not logged by {', '.join(labels)} (the metric does not exist in that run, e.g. no "
            "reference model because KL is switched off); listed in the legend with ✕."
        )
    legend = (
        "*final reward*: the training reward of the last step. *best step*: the step with the highest training "
        f"reward. *reward rise*: Welch's t between the mean training reward of the first and last "
        f"{int(RISE_WINDOW_FRACTION * 100)}% of steps (at least 3 steps each, so runs of fewer than "
        f"{RISE_MIN_STEPS} steps have no test); significant when t ≥ {RISE_T_THRESHOLD:g} (t is shown rounded "
        "towards zero). *task success*: share of held-out prompts the final policy solves (sampled at temperature "
        "1, as in training)"
        + (", Δ to the starting policy in percentage points ± the binomial standard error of the difference" if baseline else "")
        + ". *collapsed*: the collapse alarm fired (`collapse/alarm`, see docs/reliability.md), or the final step's "
        f"reward lost more than {int(DROP_FRACTION * 100)}% of a clear rise (the report's own check). *verdict*: ✓ "
        "only if the rise is significant, the final policy is not below the starting policy, and nothing collapsed. "
        "*memory: training adds*: the run's peak resident memory minus its resident memory once the trainer was "
        "built (what generation, activations and optimizer state add). Step time is TRL's `step_time`."
    )  # fmt: skip
    parts = [f"# {title}", ""]
    if command:
        parts += ["Produced by:", "", f"```\n{command}\n```", ""]
    if preamble:
        parts += [preamble, ""]
    parts += [markdown_table(rows), "", legend, ""]
    for note in notes or []:
        parts += [note, ""]
    parts += [f"![{path.stem}]({path.name})" for path in plots]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(parts) + "\n")
    (out_dir / "summary.json").write_text(json.dumps(summary(runs, baseline), indent=2, allow_nan=False))
    table_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(value)}</td>" for value in row.values()) + "</tr>" for row in rows
    )
    header_html = "".join(f"<th>{html.escape(column)}</th>" for column in (rows[0] if rows else {}))
    images = "".join(f'<p><img src="{path.name}" alt="{path.stem}"></p>' for path in plots)
    notes_html = "".join(f"<p>{html.escape(note)}</p>" for note in notes or [])
    (out_dir / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:72em;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:.3em .6em}table{border-collapse:collapse}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Produced by:</p><pre>{html.escape(command)}</pre>"
        f"<p>{html.escape(preamble)}</p><table><tr>{header_html}</tr>{table_html}</table>"
        f"<p>{html.escape(legend)}</p>{notes_html}{images}</body></html>"
    )
    return markdown
