"""Per-run numbers that `trl-basics reproduce` compares across seeds, read from a run's metric history.

Each function takes a [`RunResult`] and returns one float (NaN when the run did not log what it needs). The "window"
is 20% of the logged steps (at least 3), as in the reports' rise test.
"""

from __future__ import annotations

import math
import statistics

from .assessment import RISE_WINDOW_FRACTION, RunResult
from .plots import K1_KEY

LENGTH = "completions/mean_length"
PERPLEXITY = "perplexity"
CLIP = "clip_ratio/region_mean"
SIGNALS = {"perplexity": "collapse/perplexity_to_one", "length": "collapse/length_at_cap", "KL": "collapse/kl_spike"}
REWARD_SIGNAL = "collapse/reward_drop_after_rise"
NAN = math.nan


def values(run: RunResult, name: str) -> list[float]:
    return [float(v) for _, v in run.series((name,))[1]]


def _window(n: int) -> int:
    return max(3, int(n * RISE_WINDOW_FRACTION))


def final_mean(series: list[float]) -> float:
    """Mean of the last window of a series (less noisy than its last step)."""
    return statistics.fmean(series[-_window(len(series)) :]) if series else NAN


def first_mean(series: list[float]) -> float:
    return statistics.fmean(series[: _window(len(series))]) if series else NAN


def final_reward(run: RunResult) -> float:
    return final_mean(run.rewards)


def reward_auc(run: RunResult) -> float:
    """Area under the training-reward curve, per step (the mean reward over the run)."""
    return statistics.fmean(run.rewards) if run.rewards else NAN


def task_success(run: RunResult) -> float:
    return NAN if run.success_rate is None else run.success_rate


def reward_gain_per_kilo_sample(run: RunResult, completions_per_step: int) -> float:
    """(last-window mean reward - first-window mean reward) per 1000 completions generated."""
    rewards = run.rewards
    if not rewards:
        return NAN
    return (final_mean(rewards) - first_mean(rewards)) / (len(rewards) * completions_per_step / 1000)


def mean_of(run: RunResult, name: str) -> float:
    series = values(run, name)
    return statistics.fmean(series) if series else NAN


def kl_series(run: RunResult) -> list[tuple[int, float]]:
    """Per-token k1 KL to the reference by step (the reports' KL metric; TRL's own ``kl`` where it is the only one)."""
    _, points = run.series((K1_KEY, "kl"))
    return points


def reward_at_kl(run: RunResult, kl_level: float) -> float:
    """The training reward where the run's KL first reaches ``kl_level`` (linear interpolation between steps; the
    curves are smoothed over 3 steps first). NaN if the run never reaches it."""
    kl = dict(kl_series(run))
    reward = dict(zip(run.reward_steps, run.rewards, strict=True))
    steps = [s for s in sorted(kl) if s in reward]
    if len(steps) < 3:
        return NAN
    smooth_kl = _smooth([kl[s] for s in steps])
    smooth_reward = _smooth([reward[s] for s in steps])
    for i in range(1, len(steps)):
        a, b = smooth_kl[i - 1], smooth_kl[i]
        if a <= kl_level <= b and b > a:
            share = (kl_level - a) / (b - a)
            return smooth_reward[i - 1] + share * (smooth_reward[i] - smooth_reward[i - 1])
        if i == 1 and a >= kl_level:
            return smooth_reward[0]
    return NAN


def final_kl(run: RunResult) -> float:
    return final_mean([v for _, v in kl_series(run)])


def length_growth(run: RunResult) -> float:
    series = values(run, LENGTH)
    return final_mean(series) - first_mean(series)


def _smooth(series: list[float], width: int = 3) -> list[float]:
    out = []
    for i in range(len(series)):
        part = [v for v in series[max(0, i - width + 1) : i + 1] if math.isfinite(v)]
        out.append(statistics.fmean(part) if part else NAN)
    return out


def gold_drop_from_peak(run: RunResult, gold_metric: str) -> float:
    """Gold (task) reward of the best window minus that of the last window: how much gold success was lost."""
    series = values(run, gold_metric)
    w = _window(len(series))
    if len(series) < w:
        return NAN
    means = [statistics.fmean(series[i : i + w]) for i in range(len(series) - w + 1)]
    return max(means) - means[-1]


def gold_fall_step(run: RunResult, gold_metric: str) -> float:
    """The step after which the gold reward starts to fall: the peak of its 5-step moving average, when the last
    window ends below that peak by more than the peak window's step-to-step standard deviation. NaN if it never
    falls that much."""
    points = run.series((gold_metric,))[1]
    if len(points) < 10:
        return NAN
    steps, series = zip(*points, strict=True)
    smooth = _smooth(list(series), 5)
    peak = max(range(4, len(smooth)), key=smooth.__getitem__)
    noise = statistics.stdev(series[peak - 4 : peak + 1])
    if final_mean(list(series)) < smooth[peak] - max(noise, 1e-9):
        return float(steps[peak])
    return NAN


def first_signal_step(run: RunResult, name: str) -> float:
    """The first step at which a collapse signal (``collapse/<signal>``) fired, NaN if never."""
    return next((float(e["step"]) for e in run.log_history if e.get(name, 0) > 0 and "step" in e), NAN)


def alarm_fired(run: RunResult) -> bool:
    return run.alarm_step is not None


__all__ = [
    "CLIP",
    "LENGTH",
    "PERPLEXITY",
    "REWARD_SIGNAL",
    "SIGNALS",
    "alarm_fired",
    "final_kl",
    "final_mean",
    "final_reward",
    "first_mean",
    "first_signal_step",
    "gold_drop_from_peak",
    "gold_fall_step",
    "kl_series",
    "length_growth",
    "mean_of",
    "reward_at_kl",
    "reward_auc",
    "reward_gain_per_kilo_sample",
    "task_success",
    "values",
]
