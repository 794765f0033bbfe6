"""Reports of `demo`, `compare` and `ablate`: a Markdown page, an HTML page, and PNG plots against step."""

from __future__ import annotations

import html
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path


def plot_specs(task_metric: str | None) -> list[tuple[str, str, tuple[str, ...]]]:
    """The curves every report draws: (file stem, title, metric names in order of preference)."""
    specs = [("reward", "training reward (what the algorithm optimises)", ("reward",))]
    if task_metric:
        specs.append(("task_reward", "task reward (verifiable)", (task_metric,)))
    specs += [
        ("kl", "KL to the reference, per token", ("kl_to_ref/k1_token_mean", "kl")),
        ("length", "mean completion length (tokens)", ("completions/mean_length",)),
        ("perplexity", "perplexity of the sampled completions", ("perplexity",)),
    ]
    return specs
RISE_T_THRESHOLD = 3.0
RISE_WINDOW_FRACTION = 0.2


@dataclass
class RunResult:
    label: str
    algorithm: str
    log_history: list[dict]
    peak_rss_mb: float
    wall_seconds: float
    success_rate: float | None = None
    extras: dict = field(default_factory=dict)

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


def reward_rise(rewards: list[float]) -> tuple[float, float, float]:
    """(first-window mean, last-window mean, Welch t) over the first and last 20% of steps (at least 3 each).

    The reward "rises clearly" when t ≥ 3: the last steps' mean reward is more than three standard errors above the
    first steps', which noise between steps of a fixed policy does not produce.
    """
    window = max(3, int(len(rewards) * RISE_WINDOW_FRACTION))
    if len(rewards) < 2 * window:
        return float("nan"), float("nan"), float("nan")
    first, last = rewards[:window], rewards[-window:]
    mean_first, mean_last = statistics.fmean(first), statistics.fmean(last)
    standard_error = math.sqrt(statistics.variance(first) / window + statistics.variance(last) / window)
    t = (mean_last - mean_first) / standard_error if standard_error > 0 else math.copysign(math.inf, mean_last - mean_first)
    return mean_first, mean_last, t


def table_rows(runs: list[RunResult]) -> list[dict[str, str]]:
    rows = []
    for run in runs:
        first, last, t = reward_rise(run.rewards)
        rows.append(
            {
                "run": run.label,
                "reward first → last": f"{first:.3f} → {last:.3f}",
                "rise (t)": f"{t:.1f}" + (" ✓" if t >= RISE_T_THRESHOLD else " ✗"),
                "final reward": f"{last:.3f}",
                "task success": "—" if run.success_rate is None else f"{100 * run.success_rate:.1f}%",
                "median step time (s)": f"{statistics.median(run.step_times):.3f}" if run.step_times else "—",
                "peak memory (MB)": f"{run.peak_rss_mb:.0f}",
                "wall time (s)": f"{run.wall_seconds:.0f}",
            }
        )
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[column] for column in header) + " |" for row in rows]
    return "\n".join(lines)


def draw_plots(runs: list[RunResult], out_dir: Path, task_metric: str | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    paths = []
    for stem, title, names in plot_specs(task_metric):
        fig, ax = plt.subplots(figsize=(7, 4))
        drawn = False
        for run in runs:
            name, points = run.series(names)
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=f"{run.label} ({name})" if name != names[0] else run.label, linewidth=1.5)
            drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("step")
        ax.set_title(title)
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
) -> Path:
    """Write report.md, report.html and the plots into ``out_dir``; return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(runs, out_dir, task_metric)
    rows = table_rows(runs)
    parts = [f"# {title}", ""]
    if command:
        parts += ["Produced by:", "", f"```\n{command}\n```", ""]
    if preamble:
        parts += [preamble, ""]
    parts += [
        markdown_table(rows),
        "",
        f"*rise (t)*: Welch t-statistic between the mean training reward of the first and last "
        f"{int(RISE_WINDOW_FRACTION * 100)}% of steps; ✓ when t ≥ {RISE_T_THRESHOLD:g} (the reward rises clearly). "
        "*task success*: share of completions that solve their prompt, sampled from the final policy on held-out "
        "prompts. *peak memory*: the training process's maximum resident set size. Step time is TRL's `step_time`.",
        "",
    ]
    parts += [f"![{path.stem}]({path.name})" for path in plots]
    markdown = out_dir / "report.md"
    markdown.write_text("\n".join(parts) + "\n")
    table_html = "".join(
        "<tr>" + "".join(f"<td>{html.escape(value)}</td>" for value in row.values()) + "</tr>" for row in rows
    )
    header_html = "".join(f"<th>{html.escape(column)}</th>" for column in (rows[0] if rows else {}))
    images = "".join(f'<p><img src="{path.name}" alt="{path.stem}"></p>' for path in plots)
    (out_dir / "report.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;"
        "padding:.3em .6em}table{border-collapse:collapse}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><pre>{html.escape(command)}</pre><p>{html.escape(preamble)}</p>"
        f"<table><tr>{header_html}</tr>{table_html}</table>{images}</body></html>"
    )
    return markdown
