"""How `demo`, `compare` and `ablate` judge a run: its metric history, the rise test, the collapse checks and the
verdict.

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

import math
import statistics
from dataclasses import dataclass, field

RISE_T_THRESHOLD = 3.0
RISE_WINDOW_FRACTION = 0.2
RISE_MIN_STEPS = 6  # two windows of at least 3 steps
DROP_FRACTION = 0.6  # the report's own collapse check: the final reward lost more than this share of the rise
MEMORY_BUILT_KEY = "memory/rss_built_mb"


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


__all__ = [
    "DROP_FRACTION",
    "MEMORY_BUILT_KEY",
    "RISE_MIN_STEPS",
    "RISE_T_THRESHOLD",
    "RISE_WINDOW_FRACTION",
    "Assessment",
    "Baseline",
    "RunResult",
    "assess",
    "format_t",
    "reward_drop_after_rise",
    "reward_rise",
    "rise_is_significant",
]
