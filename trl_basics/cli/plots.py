"""The plots of `demo`, `compare` and `ablate`: one PNG per metric against step, every run a line."""

from __future__ import annotations

from pathlib import Path

from .assessment import RunResult

K1_KEY = "kl_to_ref/k1_token_mean"
RLOO_PARENT_ALGORITHMS = ("rloo", "reinforce_ma")  # TRL RLOO's own `kl` metric is k1 per token


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


__all__ = ["K1_KEY", "RLOO_PARENT_ALGORITHMS", "draw_plots", "plot_specs"]
