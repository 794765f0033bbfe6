"""The table of `demo`, `compare` and `ablate` (Markdown, HTML and terminal) and their summary.json: a row per run."""

from __future__ import annotations

import math
import statistics

from .assessment import (
    RISE_MIN_STEPS,
    RISE_T_THRESHOLD,
    Assessment,
    Baseline,
    RunResult,
    assess,
    format_t,
    rise_is_significant,
)

TERMINAL_COLUMNS = ("run", "final reward", "reward rise: first → last 20% (Welch t)", "task success", "collapsed",
                    "verdict")  # fmt: skip


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


__all__ = ["TERMINAL_COLUMNS", "markdown_table", "summary", "table_rows", "text_table"]
