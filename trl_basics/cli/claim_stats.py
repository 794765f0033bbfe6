"""The statistics of `trl-basics reproduce`: means with 95% intervals over seeds, and the verdict rule.

Every number is one value per seed (a run's final reward, task success, ...); intervals come from the spread over
seeds, never from the steps of one run. The verdict of a claim is decided by this rule, fixed before any run:

- a *directional* claim ("A is better than B") is measured as a difference d = A - B, paired by seed when both arms
  ran on the same seeds (paired t interval), otherwise Welch's t interval. It **holds** when the 95% interval of d
  lies above 0, **does not hold** when it lies below 0, and is **inconclusive at this scale** otherwise;
- a *non-inferiority* claim ("A is at least as good as B") **holds** when the 95% interval of d lies above -margin,
  **does not hold** when it lies below 0, and is **inconclusive at this scale** otherwise;
- an *upper-bound* claim ("x is rare") **holds** when the 95% interval of x lies below the bound, **does not hold**
  when it lies above it, and is **inconclusive at this scale** otherwise;
- fewer than 2 seeds with a value: **inconclusive at this scale** (no interval can be formed).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
INCONCLUSIVE = "inconclusive at this scale"
VERDICTS = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)

# Two-sided 95% quantiles of Student's t, by degrees of freedom (a fractional df is rounded down: conservative).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t_quantile(df: float) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (df > 30 uses df = 30's: conservative)."""
    if not df >= 1:
        return math.inf
    return _T975[min(int(df), 30) - 1]


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def text(self, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
        if self.n == 0:
            return "no value"
        if self.n < 2:
            return f"{self.mean * scale:.{digits}f}{unit} (n = 1, no interval)"
        half = (self.high - self.low) / 2 * scale
        return f"{self.mean * scale:+.{digits}f} ± {half:.{digits}f}{unit} (n = {self.n})"


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean_interval(values) -> Interval:
    """Mean and t interval (95%) of the values (one per seed)."""
    values = _finite(values)
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(values)
    if n < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def difference_interval(a: dict[int, float], b: dict[int, float]) -> tuple[Interval, str]:
    """95% interval of mean(a) - mean(b), values keyed by seed: paired t over the common seeds when every seed is
    in both arms, else Welch's t. Returns (interval, the test's name)."""
    a = {s: v for s, v in a.items() if v is not None and math.isfinite(v)}
    b = {s: v for s, v in b.items() if v is not None and math.isfinite(v)}
    if a and set(a) == set(b):
        return mean_interval([a[s] - b[s] for s in sorted(a)]), "paired t over seeds"
    xa, xb = list(a.values()), list(b.values())
    if len(xa) < 2 or len(xb) < 2:
        mean = statistics.fmean(xa) - statistics.fmean(xb) if xa and xb else math.nan
        return Interval(mean, math.nan, math.nan, min(len(xa), len(xb))), "Welch t"
    va, vb = statistics.variance(xa) / len(xa), statistics.variance(xb) / len(xb)
    se = math.sqrt(va + vb)
    mean = statistics.fmean(xa) - statistics.fmean(xb)
    if se == 0:
        return Interval(mean, mean, mean, min(len(xa), len(xb))), "Welch t"
    df = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    half = t_quantile(df) * se
    return Interval(mean, mean - half, mean + half, min(len(xa), len(xb))), "Welch t"


def verdict(interval: Interval, kind: str = "directional", margin: float = 0.0) -> str:
    """The pre-stated rule (module docstring). ``kind``: "directional", "non_inferiority" or "upper_bound"
    (``margin`` is then the bound)."""
    if interval.n < 2 or math.isnan(interval.low):
        return INCONCLUSIVE
    if kind == "directional":
        lower_bound, upper_bound = 0.0, 0.0
    elif kind == "non_inferiority":
        lower_bound, upper_bound = -margin, 0.0
    elif kind == "upper_bound":
        if interval.high < margin:
            return HOLDS
        return DOES_NOT_HOLD if interval.low > margin else INCONCLUSIVE
    else:
        raise ValueError(f"unknown claim kind {kind!r}")
    if interval.low > lower_bound:
        return HOLDS
    if interval.high < upper_bound:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


RULE_TEXT = (
    "Verdict rule (fixed before any run): each claim is one number per seed. A directional claim (A better than B) "
    "is measured as d = A - B (paired t interval over seeds when both arms ran on the same seeds, else Welch's t); "
    "it holds when the 95% interval of d lies above 0, does not hold when it lies below 0, and is inconclusive at "
    "this scale otherwise. A non-inferiority claim (A at least as good as B) holds when the interval lies above "
    "-margin, does not hold when it lies below 0, and is inconclusive otherwise. An upper-bound claim (x is rare) "
    "holds when the interval of x lies below the bound and does not hold when it lies above it. Fewer than 2 seeds "
    "with a value is inconclusive. Intervals are over seeds, never over the steps of one run."
)

__all__ = [
    "DOES_NOT_HOLD",
    "HOLDS",
    "INCONCLUSIVE",
    "RULE_TEXT",
    "VERDICTS",
    "Interval",
    "difference_interval",
    "mean_interval",
    "t_quantile",
    "verdict",
]
