"""Reports of `demo`, `compare` and `ablate`: a Markdown page, an HTML page, summary.json and PNG plots against step.

How a run is judged is in `assessment.py`, the table and summary.json in `tables.py`, the plots in `plots.py`; this
module writes the pages. Their names are importable from here too.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .assessment import (
    DROP_FRACTION,
    RISE_MIN_STEPS,
    RISE_T_THRESHOLD,
    RISE_WINDOW_FRACTION,
    Assessment,
    Baseline,
    RunResult,
    assess,
    format_t,
    reward_drop_after_rise,
    reward_rise,
    rise_is_significant,
)
from .plots import draw_plots, plot_specs
from .tables import TERMINAL_COLUMNS, markdown_table, summary, table_rows, text_table


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


__all__ = [
    "DROP_FRACTION",
    "RISE_MIN_STEPS",
    "RISE_T_THRESHOLD",
    "RISE_WINDOW_FRACTION",
    "TERMINAL_COLUMNS",
    "Assessment",
    "Baseline",
    "RunResult",
    "assess",
    "draw_plots",
    "format_t",
    "markdown_table",
    "plot_specs",
    "reward_drop_after_rise",
    "reward_rise",
    "rise_is_significant",
    "summary",
    "table_rows",
    "text_table",
    "write_report",
]
