"""The count-conditioned estimator (DESIGN.md §2.7): the accuracy at any fault rate from the mean
accuracies of maps with exactly k faults.

Under the stored-parameter fault models the faults of the tensors every protection shares number
K ~ Binomial(N_s, p) and those of a protection's own tensors (its bounds) J ~ Binomial(N_o, p),
independently; given (K, J) = (k, j) the faults are uniform over each part whatever p. So

    acc(p) = sum_{k, j} P(K = k) P(J = j) a_{k,j},     a_{k,j} = E[accuracy | k shared, j own faults]

with a_{0,0} the clean accuracy and no a_{k,j} depending on p. A campaign measures a_{k,j} on a set
C of cells (k, j) (``cells_for_rates``); the cells left out weigh T(p) = 1 - sum_{c in C} w_c(p)
and, accuracies being in [0, 1], add between 0 and T(p). The sampling error of the measured part is
sum_c w_c^2 s_c^2 / n_c (cells are measured on independent maps and images), with a Student-t
quantile at the Welch-Satterthwaite degrees of freedom. The interval is

    [S - h, S + T + h],   S = sum_{c in C} w_c(p) mean_c,   h = t_{nu} sqrt(sum_c w_c^2 s_c^2 / n_c)

and the point estimate its centre S + T / 2 (docs/campaigns.md derives it). Pure functions of
plain numbers: the campaign, the report and the validation benchmark share them.

Any rate from a logged table (a run's conditioned_ak.json artifact):

    python -m fitact_pipeline.conditioned_rates conditioned_ak.json 1e-10 1e-9 1e-8 1e-7
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as sps

#: at most this many distinct counts per binomial: a rate whose counts need more is refused (the
#: nested design measures it directly; a_k interpolated in k would need its own validation)
MAX_COUNTS = 64


@dataclass(frozen=True)
class Cell:
    """What one cell measured: ``n`` maps with exactly ``k`` shared and ``j`` own faults, the mean and
    sample standard deviation of their accuracies. (0, 0) is the clean model: n = inf, sd = 0."""
    k: int
    j: int
    n: float
    mean: float
    sd: float


def count_window(n_bits: int, rate: float, eps: float) -> tuple[int, int]:
    """The counts [lo, hi] of K ~ Binomial(n_bits, rate) outside which at most ``eps`` of the mass
    lies (eps / 2 on each side; lo = 0 at low rates)."""
    if n_bits == 0 or rate == 0.0:
        return 0, 0
    lo = int(sps.binom.ppf(eps / 2, n_bits, rate))
    hi = int(sps.binom.ppf(1 - eps / 2, n_bits, rate))
    # ppf(q) is the smallest k with cdf(k) >= q: P(K < lo) < eps/2, P(K > hi) <= eps/2
    return lo, hi


def cells_for_rates(n_shared: int, n_own: int, rates: Iterable[float], eps: float,
                    max_counts: int = MAX_COUNTS) -> list[tuple[int, int]]:
    """The cells (k, j) that carry all but at most ``eps`` of the mass of every rate: per rate the
    fewest cells, heaviest first, within the windows of the two binomials (eps / 2 outside each,
    so the windows' product holds at least 1 - eps), united over the rates. A rate whose window
    holds more than ``max_counts`` counts is refused with a one-line ValueError naming it."""
    cells: set[tuple[int, int]] = set()
    for rate in rates:
        windows = []
        for part, n in (("shared", n_shared), ("own", n_own)):
            lo, hi = count_window(n, rate, eps / 2)
            if hi - lo + 1 > max_counts:
                raise ValueError(f"campaign.rates: rate {rate:g} is not allowed with the conditioned design: its "
                                 f"{part} fault count (Binomial({n}, {rate:g})) spans {hi - lo + 1} values, the limit "
                                 f"is {max_counts}; measure this rate with the nested design")
            windows.append(np.arange(lo, hi + 1))
        k, j = (a.ravel() for a in np.meshgrid(*windows, indexing="ij"))
        w = sps.binom.pmf(k, n_shared, rate) * sps.binom.pmf(j, n_own, rate)
        order = np.argsort(-w, kind="stable")
        # heaviest first until the mass left out is at most eps (1 - cumsum, kept >= 0 by the min)
        take = int(np.searchsorted(np.cumsum(w[order]), 1.0 - eps)) + 1
        cells.update(zip(k[order[:take]].tolist(), j[order[:take]].tolist()))
    return sorted(cells)


def cell_weights(cells: Sequence[tuple[int, int]], n_shared: int, n_own: int, rate: float) -> np.ndarray:
    """P(K = k) P(J = j) of each cell at ``rate``."""
    k = np.array([c[0] for c in cells], dtype=np.int64)
    j = np.array([c[1] for c in cells], dtype=np.int64)
    return sps.binom.pmf(k, n_shared, rate) * sps.binom.pmf(j, n_own, rate)


def estimate(cells: Sequence[Cell], weights: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """acc(p) from measured cells and their weights at p: the point estimate, the interval
    (sampling part plus the truncation bound), and its parts. A cell with weight > 0 needs n >= 2
    unless it is exact (n = inf)."""
    n = np.array([c.n for c in cells], dtype=np.float64)
    out = intervals(np.asarray(weights, dtype=np.float64)[None, :], np.array([c.mean for c in cells], dtype=np.float64),
                    n, np.array([c.sd for c in cells], dtype=np.float64), level)
    return {**{key: float(v[0]) for key, v in out.items()}, "trials": float(n[np.isfinite(n)].sum())}


def intervals(weights: np.ndarray, mean: np.ndarray, n: np.ndarray, sd: np.ndarray,
              level: float = 0.95) -> dict[str, np.ndarray]:
    """``estimate`` of several rates at once: ``weights`` has one row per rate, one column per cell;
    ``mean``, ``n``, ``sd`` one entry per cell (n = inf: exact). Arrays of one entry per rate."""
    exact = np.isinf(n)
    per_map = np.where(exact, 0.0, sd ** 2 / np.where(exact, 1.0, n))
    var_parts = weights ** 2 * per_map  # v_c per rate and cell
    var = var_parts.sum(axis=1)
    df = welch_df(var_parts, n)
    with np.errstate(invalid="ignore"):
        half = np.where(var > 0, sps.t.ppf(0.5 + level / 2, df) * np.sqrt(var), 0.0)
    tail = np.maximum(0.0, 1.0 - weights.sum(axis=1))
    measured = weights @ mean
    low, high = np.maximum(0.0, measured - half), np.minimum(1.0, measured + tail + half)
    return {"mean": measured + tail / 2, "ci_low": low, "ci_high": high, "ci_halfwidth": (high - low) / 2,
            "sampling_halfwidth": half, "tail_mass": tail, "df": df}


def welch_df(var_parts: np.ndarray, n: np.ndarray) -> np.ndarray | float:
    """Welch-Satterthwaite degrees of freedom of a weighted sum of independent cell means:
    (sum v_c)^2 / sum v_c^2 / (n_c - 1), over the cells with sampling variance (inf if none);
    one value per row of ``var_parts`` (a float for one row given as a vector)."""
    v = np.atleast_2d(var_parts)
    live = v > 0
    denom = np.where(live, v ** 2 / np.where(live, n - 1, 1.0), 0.0).sum(axis=1)
    df = np.where(denom > 0, v.sum(axis=1) ** 2 / np.where(denom > 0, denom, 1.0), np.inf)
    return float(df[0]) if var_parts.ndim == 1 else df


def acc_at_rate(table: dict, rate: float, level: float | None = None) -> dict[str, float]:
    """acc(rate) and its interval from a logged a_k table (``ak_table``): any rate, the cells the
    table lacks counting as the truncated tail (so a rate the campaign did not plan for gets an
    honest, possibly wide, interval)."""
    if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
        raise ValueError(f"rate={rate!r} is not allowed; use a number in [0, 1]")
    cells = [Cell(**c) for c in table["cells"]]
    w = cell_weights([(c.k, c.j) for c in cells], table["n_shared"], table["n_own"], float(rate))
    return estimate(cells, w, table["level"] if level is None else level)


def ak_table(cells: Sequence[Cell], n_shared: int, n_own: int, level: float, **extra) -> dict:
    """The JSON-able a_k table a conditioned campaign logs (conditioned_ak.json): enough to ask for
    any rate afterwards (``acc_at_rate``)."""
    rows = [{"k": c.k, "j": c.j, "n": c.n if math.isfinite(c.n) else math.inf, "mean": c.mean, "sd": c.sd}
            for c in cells]
    return {"n_shared": int(n_shared), "n_own": int(n_own), "level": float(level), "cells": rows, **extra}


def cell_summary(k: int, j: int, accuracies: Sequence[float]) -> Cell:
    a = np.asarray(accuracies, dtype=np.float64)
    return Cell(k, j, float(a.size), float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0)


def next_cell(n: np.ndarray, faults: np.ndarray, weights: np.ndarray) -> int:
    """Index of the cell furthest below its share of the maps at one rate (``n`` maps so far, inf
    for the exact cell; ``faults`` = k + j): shares proportional to w_c sqrt(k + j), a model of the
    spread, not its estimate. If each fault is harmful with a small probability q, a map with f
    faults is harmful with probability about f q, so the spread of its accuracy grows like
    sqrt(f): Neyman allocation under that model. Allocating by the *estimated* spreads instead
    starves the cells whose few maps missed the rare harmful faults, and the campaign stops on an
    interval too narrow (benchmarks/conditioned_validation.py measured 5 % coverage that way at 1e-5)."""
    share = np.asarray(weights, dtype=np.float64) * np.sqrt(faults)
    live = np.isfinite(n) & (share > 0)
    deficit = np.where(live, share / np.where(live, n + 1.0, 1.0), -1.0)
    return int(np.argmax(deficit))

