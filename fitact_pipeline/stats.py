"""Statistics of fault campaigns: intervals, paired tests, curve summaries, adaptive stopping.

Every function takes plain sequences of per-trial accuracies (fractions in [0, 1]) so the same code
serves the campaign (while it runs), the tracking (what is logged) and the report (what is drawn).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of the mean. One value gives a zero-width interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def ci_halfwidth(values: Sequence[float], level: float = 0.95) -> float:
    mean, low, _ = mean_ci(values, level)
    return mean - low if len(values) > 1 else math.inf


def bootstrap_median_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Median and percentile-bootstrap interval (seeded, so reports are reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(x, size=(resamples, x.size), replace=True), axis=1)
    alpha = (1 - level) / 2
    return float(np.median(x)), float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


def summarize(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """The per-rate statistics DESIGN.md §2.5 asks for."""
    x = np.asarray(values, dtype=np.float64)
    mean, low, high = mean_ci(x, level)
    q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    return {
        "mean": mean, "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "median": float(median), "q1": float(q1), "q3": float(q3),
        "min": float(x.min()), "max": float(x.max()),
        "ci_low": low, "ci_high": high, "ci_halfwidth": (high - low) / 2, "trials": int(x.size),
    }


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over trials that share a fault map, its t-interval and a Wilcoxon p-value."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    diff = a - b
    mean, low, high = mean_ci(diff, level)
    if diff.size < 2 or np.all(diff == 0):
        p = 1.0
    else:
        p = float(sps.wilcoxon(a, b, zero_method="zsplit").pvalue)
    return {"mean_diff": mean, "ci_low": low, "ci_high": high, "wilcoxon_p": p, "pairs": int(diff.size)}


def resilience_auc(rates: Sequence[float], mean_accs: Sequence[float]) -> float:
    """Area under mean accuracy vs log10(rate), normalised by the decades spanned (so 1.0 = no loss
    at perfect accuracy). Rate 0 has no log: it is left out."""
    pairs = sorted((r, a) for r, a in zip(rates, mean_accs) if r > 0)
    if len(pairs) < 2:
        return float(pairs[0][1]) if pairs else float("nan")
    x = np.log10([r for r, _ in pairs])
    y = np.array([a for _, a in pairs])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def critical_rate(rates: Sequence[float], mean_accs: Sequence[float], level: float) -> float:
    """Smallest fault rate at which the mean accuracy falls below `level`, interpolated on log10
    rate between the last rate above and the first below. inf if it never falls below."""
    pairs = sorted((r, a) for r, a in zip(rates, mean_accs) if r > 0)
    for i, (rate, acc) in enumerate(pairs):
        if acc < level:
            if i == 0:
                return rate
            r0, a0 = pairs[i - 1]
            t = (a0 - level) / (a0 - acc)
            return float(10 ** (math.log10(r0) + t * (math.log10(rate) - math.log10(r0))))
    return math.inf


def should_stop(values: Sequence[float], target_halfwidth: float | None, min_trials: int,
                max_trials: int, level: float = 0.95) -> bool:
    """Adaptive stopping for one rate: never before min_trials, always at max_trials, otherwise
    when the CI half-width of the mean is under the target."""
    n = len(values)
    if n < min_trials:
        return False
    if n >= max_trials:
        return True
    return target_halfwidth is not None and ci_halfwidth(values, level) <= target_halfwidth
