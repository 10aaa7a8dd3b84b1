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
    """Mean and Student-t confidence interval of the mean. One value gives a zero-width interval.
    Not an interval the pipeline reports (it under-covers heavy-tailed fault maps: docs/campaigns.md,
    "Intervals"); the stopping rule reads its half-width (``t_halfwidth``) and benchmarks compare it."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    half = float(sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def t_halfwidth(values: Sequence[float], level: float = 0.95) -> float:
    """The Student-t half-width ``should_stop`` reads (inf below two values)."""
    mean, low, _ = mean_ci(values, level)
    return mean - low if len(values) > 1 else math.inf


#: the adaptive stopping rule (``should_stop``): part of an adaptive job's identity
STOPPING = "t-and-unseen-tail"
#: the interval of record of every per-rate statistic (``summarize``: ci_low/ci_high) and of paired
#: differences: part of a job's identity, since runs logged before it hold t-intervals there
INTERVAL = "bounded-dirichlet"
#: Dirichlet draws of ``bounded_mean_ci`` (its quantiles then move by well under 0.1 point)
BOUNDED_DRAWS = 10_000


def bounded_mean_ci(values: Sequence[float], level: float = 0.95, lower: float = 0.0, upper: float = 1.0,
                    draws: int = BOUNDED_DRAWS, seed: int = 0) -> tuple[float, float, float]:
    """Mean and an interval of the mean of a variable known to lie in [lower, upper] that assumes
    nothing else: heavy tails and rare catastrophic fault maps included (Gaffke 2005; Learned-Miller
    and Thomas 2019). Each end is a quantile of the Dirichlet(1, ..., 1)-weighted mean of the
    values plus one extra value at the bound on that side: mass the sample has not seen may sit at
    the bound. With M values all at a, the low end is a (1 - q), q the 97.5 % quantile of Beta(1, M):
    from 20 maps that all agree, 1 - 0.025^(1/20) = 16.8 % of maps at 0 cannot be excluded. Seeded."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bounded_mean_ci needs at least one value")
    distinct, weights = _dirichlet_weights(x, draws, seed)  # one set of weights for both ends
    alpha = (1 - level) / 2
    low = float(np.quantile(weights @ np.append(distinct, lower), alpha))
    high = float(np.quantile(weights @ np.append(distinct, upper), 1 - alpha))
    return float(x.mean()), low, high


def _dirichlet_weights(x: np.ndarray, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of x and ``draws`` Dirichlet(1, ..., 1) weight vectors over them plus one
    extra atom (last column). Tied values share their weights: their summed weight is one
    Gamma(count) draw (the aggregation property), the same distribution at a fraction of the cost
    (accuracies are k / n)."""
    distinct, counts = np.unique(x, return_counts=True)
    gammas = np.random.default_rng(seed).standard_gamma(np.append(counts, 1.0), size=(draws, distinct.size + 1))
    return distinct, gammas / gammas.sum(axis=1, keepdims=True)


def bounded_mean_p(values: Sequence[float], threshold: float, greater: bool, lower: float = 0.0,
                   upper: float = 1.0, draws: int = BOUNDED_DRAWS, seed: int = 0) -> float:
    """p-value of H1: mean > threshold (``greater``) or mean < threshold, for a variable known to lie
    in [lower, upper], by the test that ``bounded_mean_ci`` inverts (Gaffke 2005): the share of
    Dirichlet-weighted means, with the extra atom at the bound against the claim, that do not reach
    past the threshold. Reject at level a iff the one-sided (1 - a) bounded interval excludes the
    threshold. Monte Carlo with the add-one rule, so p >= 1 / (draws + 1) (10,000 draws: Holm over
    up to ~500 claims at 0.05 is still decidable)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bounded_mean_p needs at least one value")
    distinct, weights = _dirichlet_weights(x, draws, seed)
    if greater:
        beyond = np.count_nonzero(weights @ np.append(distinct, lower) > threshold)
    else:
        beyond = np.count_nonzero(weights @ np.append(distinct, upper) < threshold)
    return float((draws - beyond + 1) / (draws + 1))


def population_ci(mean: float, low: float, high: float, pool: int, level: float = 0.95) -> tuple[float, float]:
    """Widen an interval over fault maps given the evaluation pool to one over maps and images (the
    pool as a random sample of ``pool`` images of the population). The pool's own error has variance
    var_j(a_j) / pool, a_j the mean accuracy of image j over maps; a_j lies in [0, 1] with mean
    ``mean``, so var_j(a_j) <= mean (1 - mean): an upper bound, tight where faults rarely change an
    image's outcome. Map and pool errors are independent: their half-widths add in quadrature."""
    image = float(sps.norm.ppf(0.5 + level / 2)) * math.sqrt(max(mean * (1 - mean), 0.0) / pool)
    return mean - math.hypot(mean - low, image), mean + math.hypot(high - mean, image)


def bootstrap_median_ci(values: Sequence[float], level: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float, float]:
    """Median and percentile-bootstrap interval (seeded, so reports are reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(x, size=(resamples, x.size), replace=True), axis=1)
    alpha = (1 - level) / 2
    return float(np.median(x)), float(np.quantile(medians, alpha)), float(np.quantile(medians, 1 - alpha))


def summarize(values: Sequence[float], level: float = 0.95, pool: int | None = None) -> dict[str, float]:
    """The per-rate statistics DESIGN.md §2.5 asks for, for per-trial values in [0, 1] (accuracies,
    SDC and critical rates), with two intervals of their mean (docs/campaigns.md, "Intervals"):

    - ``ci_low/ci_high`` (``ci_halfwidth`` = half their distance), the interval of record, and the
      same values as ``ci_bounded_low/high`` (the name older readers use): ``bounded_mean_ci``;
      estimand the mean over fault maps on this evaluation pool; valid for any distribution of the
      values in [0, 1], rare catastrophic maps included (a t-interval over 20 classic maps is not);
    - ``ci_pop_low/high``: over maps and images, the ``pool`` images as a sample of the population
      (``population_ci`` on the bounded interval); only when the pool size is given."""
    x = np.asarray(values, dtype=np.float64)
    if x.size and not (x.min() >= 0.0 and x.max() <= 1.0):  # the bounded interval assumes [0, 1]
        raise ValueError(f"summarize needs per-trial values in [0, 1], got min {float(x.min())!r}, "
                         f"max {float(x.max())!r}")
    mean, low, high = bounded_mean_ci(x, level)
    q1, median, q3 = np.quantile(x, [0.25, 0.5, 0.75])
    out = {
        "mean": mean, "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "median": float(median), "q1": float(q1), "q3": float(q3),
        "min": float(x.min()), "max": float(x.max()),
        "ci_low": low, "ci_high": high, "ci_halfwidth": (high - low) / 2, "trials": int(x.size),
        "ci_bounded_low": low, "ci_bounded_high": high,
    }
    if pool:
        out["ci_pop_low"], out["ci_pop_high"] = population_ci(mean, low, high, pool, level)
    return out


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-trial paired differences of fractions and its interval of record:
    ``bounded_mean_ci`` on the differences' own bounds [-1, 1] (docs/campaigns.md, "Intervals")."""
    return bounded_mean_ci(diffs, level, lower=-1.0, upper=1.0)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over trials that share a fault map, its interval and a Wilcoxon p-value. The
    interval (``ci_low/ci_high``) is ``paired_ci``, bounded on the differences' own range [-1, 1]:
    valid for any distribution of the differences (a t-interval over 20 classic maps misses a rare
    map that is catastrophic for one arm only); the p-value is Wilcoxon signed-rank, two-sided."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} vs {b.size}")
    diff = a - b
    mean, low, high = paired_ci(diff, level)
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
    """Adaptive stopping for one rate: never before min_trials, always at max_trials, otherwise when
    the t half-width is within the target and so is ``unseen_tail``: a run of similar trials (no
    catastrophic map seen yet, every image right) gives a t half-width near 0 long before rare bad
    maps could have shown; stopping on t alone then under-covers (docs/campaigns.md, "Intervals").
    The rule is not the reported interval: the bounded ``ci_halfwidth`` logged at a stop can be
    somewhat wider than the target (the coverage benchmark measured it under this rule)."""
    n = len(values)
    if n < min_trials:
        return False
    if n >= max_trials:
        return True
    if target_halfwidth is None:
        return False
    return max(t_halfwidth(values, level), unseen_tail(values, level)) <= target_halfwidth


def unseen_tail(values: Sequence[float], level: float = 0.95, lower: float = 0.0, upper: float = 1.0) -> float:
    """How far maps not yet seen could move the mean: from M trials, a share of up to
    1 - ((1 - level) / 2)^(1/M) of the maps may sit at a bound without any having been drawn (the
    "rule of three"; the extra atom of ``bounded_mean_ci``), moving the mean by that share times the
    distance to the farther bound."""
    x = np.asarray(values, dtype=np.float64)
    share = 1 - ((1 - level) / 2) ** (1 / x.size)
    return share * max(float(x.mean()) - lower, upper - float(x.mean()))
