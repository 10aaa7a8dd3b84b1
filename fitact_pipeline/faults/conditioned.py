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

and the point estimate its centre S + T / 2 (docs/campaigns.md derives it). A rate whose shared
count spans more than MAX_COUNTS values is measured on GRID_NODES counts (times every own count),
a_{k,j} interpolated linearly in k between them: the interpolant's sum over the binomial is again a
weighted sum of the measured cells (``rate_weights``), and a held-out check cell at the midpoint of
every gap bounds the interpolation error, added to both ends of the interval (``intervals``).
``rate_at_loss`` inverts the pointwise intervals for the rate of a given accuracy loss. Pure
functions of plain numbers: the campaign, the report and the validation benchmark share them.

Any rate from a logged table (a run's conditioned_ak.json artifact):

    python -m fitact_pipeline.conditioned_rates conditioned_ak.json 1e-10 1e-9 1e-8 1e-7
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import stats as sps

#: at most this many distinct counts per binomial measured one by one: a rate whose shared count
#: needs more is measured on a grid of GRID_NODES counts with checked interpolation between them;
#: one whose own count (the bounds) needs more is refused
MAX_COUNTS = 64
#: counts of the shared binomial measured per large-K rate (evenly over its window): 8 segments,
#: each checked at its midpoint
GRID_NODES = 9


@dataclass(frozen=True)
class Cell:
    """What one cell measured: ``n`` maps with exactly ``k`` shared and ``j`` own faults, the mean and
    sample standard deviation of their accuracies. (0, 0) is the clean model: n = inf, sd = 0.
    ``role`` "check": a held-out count between two grid counts, measured only to check the
    interpolation (it carries no weight of its own)."""
    k: int
    j: int
    n: float
    mean: float
    sd: float
    role: str = "node"


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
                    max_counts: int = MAX_COUNTS, grid_nodes: int = GRID_NODES) -> list[tuple[int, int]]:
    """The cells (k, j) that carry all but at most ``eps`` of the mass of every rate: per rate the
    fewest cells, heaviest first, within the windows of the two binomials (eps / 2 outside each,
    so the windows' product holds at least 1 - eps), united over the rates. A rate whose shared
    window holds more than ``max_counts`` counts gets ``grid_nodes`` counts evenly over it, times
    every count of its own window (``grid_plan``: the check cells between them come from
    ``check_cells``). A rate whose own window holds more than ``max_counts`` counts is refused
    with a one-line ValueError naming it."""
    cells: set[tuple[int, int]] = set()
    for rate in rates:
        windows = []
        for part, n in (("shared", n_shared), ("own", n_own)):
            lo, hi = count_window(n, rate, eps / 2)
            if hi - lo + 1 > max_counts and part == "own":
                raise ValueError(f"campaign.rates: rate {rate:g} is not allowed with the conditioned design: its "
                                 f"own fault count (Binomial({n}, {rate:g}), the protection's bounds) spans "
                                 f"{hi - lo + 1} values, the limit is {max_counts}; measure this rate with the "
                                 f"nested design")
            windows.append(np.arange(lo, hi + 1))
        if windows[0].size > max_counts:
            cells.update(grid_plan(windows[0], windows[1], grid_nodes))
            continue
        k, j = (a.ravel() for a in np.meshgrid(*windows, indexing="ij"))
        w = sps.binom.pmf(k, n_shared, rate) * sps.binom.pmf(j, n_own, rate)
        order = np.argsort(-w, kind="stable")
        # heaviest first until the mass left out is at most eps (1 - cumsum, kept >= 0 by the min)
        take = int(np.searchsorted(np.cumsum(w[order]), 1.0 - eps)) + 1
        cells.update(zip(k[order[:take]].tolist(), j[order[:take]].tolist()))
    return sorted(cells)


def grid_plan(shared_window: np.ndarray, own_window: np.ndarray, grid_nodes: int) -> set[tuple[int, int]]:
    """The grid cells of one large-K rate: ``grid_nodes`` shared counts evenly over the shared
    window (its ends included) times every own count of the own window (a product grid: the own
    part, the bounds, is small, so its counts are measured one by one and a_{k,j} is interpolated
    in k only, at each j)."""
    lo, hi = int(shared_window[0]), int(shared_window[-1])
    nodes = np.unique(np.round(np.linspace(lo, hi, max(2, grid_nodes))).astype(np.int64))
    return {(int(k), int(j)) for k in nodes for j in own_window}


def check_cells(nodes: Sequence[tuple[int, int]], spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The held-out cells that check the interpolation: the midpoint count of every gap between
    consecutive node counts (at the same j) that lies inside a grid ``span`` [lo, hi] of shared
    counts. Gaps outside every span (between the counts of two small rates) are not interpolated:
    their mass stays in the tail, as before the grid existed."""
    by_j: dict[int, list[int]] = {}
    for k, j in nodes:
        by_j.setdefault(j, []).append(k)
    spans = list(spans)
    out = []
    for j, ks in by_j.items():
        ks = sorted(ks)
        for a, b in zip(ks[:-1], ks[1:]):
            if b - a > 1 and any(lo <= a and b <= hi for lo, hi in spans):
                out.append(((a + b) // 2, j))
    return sorted(out)


def grid_spans(n_shared: int, n_own: int, rates: Iterable[float], eps: float,
               max_counts: int = MAX_COUNTS) -> list[tuple[int, int]]:
    """The shared windows of the rates that need a grid (``cells_for_rates``)."""
    spans = []
    for rate in rates:
        lo, hi = count_window(n_shared, rate, eps / 2)
        if hi - lo + 1 > max_counts:
            spans.append((lo, hi))
    return spans


@dataclass(frozen=True)
class Segments:
    """The interpolated gaps of a set of cells: per gap the indices of its left node, its check cell
    and its right node, the check's position ``lam`` = (m - a) / (b - a) between them, and the
    counts it spans (a + 1 .. b - 1 at own count j)."""
    left: np.ndarray
    check: np.ndarray
    right: np.ndarray
    lam: np.ndarray
    a: np.ndarray
    b: np.ndarray
    j: np.ndarray

    @classmethod
    def of(cls, cells: Sequence[tuple[int, int]], roles: Sequence[str]) -> "Segments":
        """Every gap between consecutive node counts at one j that holds a check cell: only a checked
        gap is interpolated (the others' counts are tail)."""
        index = {c: i for i, c in enumerate(cells)}
        by_j: dict[int, list[int]] = {}
        for (k, j), role in zip(cells, roles):
            if role == "node":
                by_j.setdefault(j, []).append(k)
        checks = {c: index[c] for c, r in zip(cells, roles) if r == "check"}
        rows = []
        for j, ks in sorted(by_j.items()):
            ks = sorted(ks)
            for a, b in zip(ks[:-1], ks[1:]):
                inside = [m for m in range(a + 1, b) if (m, j) in checks] if b - a > 1 else []
                if inside:
                    m = inside[len(inside) // 2]
                    rows.append((index[(a, j)], checks[(m, j)], index[(b, j)], (m - a) / (b - a), a, b, j))
        cols = list(zip(*rows)) if rows else [()] * 7
        types = (np.int64, np.int64, np.int64, np.float64, np.int64, np.int64, np.int64)
        return cls(*(np.array(c, dtype=t) for c, t in zip(cols, types)))

    def __len__(self) -> int:
        return int(self.left.size)

    def gaps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the k-gap (a, b) of each row as an index into the distinct gaps, which the own counts j of
        a product grid share; the gap before and after each distinct gap along k, itself where none)."""
        distinct, which = np.unique(np.stack([self.a, self.b], axis=1), axis=0, return_inverse=True)
        idx = np.arange(len(distinct))
        prev, nxt = idx.copy(), idx.copy()
        joined = distinct[:-1, 1] == distinct[1:, 0]  # sorted by (a, b): b of one is a of the next
        prev[1:][joined] = idx[:-1][joined]
        nxt[:-1][joined] = idx[1:][joined]
        return which.reshape(-1), prev, nxt


def rate_weights(cells: Sequence[tuple[int, int]], roles: Sequence[str], n_shared: int, n_own: int,
                 rates: Sequence[float], segments: Segments | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(weights, segment masses), one row per rate: a node's weight is P(K = k) P(J = j) plus its
    share of the checked gaps beside it (count k' in gap (a, b) gives P(K = k') P(J = j) (b - k') /
    (b - a) to node a and (k' - a) / (b - a) to node b: the piecewise-linear interpolant of a_k is
    linear in the node values, so its sum over the binomial is a weighted sum of them); a check
    cell's weight is 0. Without checked gaps the weights are ``cell_weights``' exactly."""
    segments = Segments.of(cells, roles) if segments is None else segments
    node = np.array([r == "node" for r in roles])
    w = np.stack([np.where(node, cell_weights(cells, n_shared, n_own, r), 0.0) for r in rates])
    mass = np.zeros((len(rates), len(segments)))
    p = np.asarray(rates, dtype=np.float64)[:, None]
    for s in range(len(segments)):
        a, b = int(segments.a[s]), int(segments.b[s])
        ks = np.arange(a + 1, b)
        lam = (ks - a) / (b - a)
        pk = sps.binom.pmf(ks[None, :], n_shared, p) * sps.binom.pmf(int(segments.j[s]), n_own, p)
        w[:, segments.left[s]] += pk @ (1.0 - lam)
        w[:, segments.right[s]] += pk @ lam
        mass[:, s] = pk.sum(axis=1)
    return w, mass


def cell_weights(cells: Sequence[tuple[int, int]], n_shared: int, n_own: int, rate: float) -> np.ndarray:
    """P(K = k) P(J = j) of each cell at ``rate``."""
    k = np.array([c[0] for c in cells], dtype=np.int64)
    j = np.array([c[1] for c in cells], dtype=np.int64)
    return sps.binom.pmf(k, n_shared, rate) * sps.binom.pmf(j, n_own, rate)


def estimate(cells: Sequence[Cell], weights: np.ndarray, level: float = 0.95, segments: Segments | None = None,
             seg_mass: np.ndarray | None = None) -> dict[str, float]:
    """acc(p) from measured cells and their weights at p: the point estimate, the interval
    (sampling part plus the truncation bound plus, with checked gaps, the interpolation term), and
    its parts. A cell with weight > 0 needs n >= 2 unless it is exact (n = inf)."""
    n = np.array([c.n for c in cells], dtype=np.float64)
    out = intervals(np.asarray(weights, dtype=np.float64)[None, :], np.array([c.mean for c in cells], dtype=np.float64),
                    n, np.array([c.sd for c in cells], dtype=np.float64), level, segments,
                    None if seg_mass is None else np.asarray(seg_mass, dtype=np.float64)[None, :])
    return {**{key: float(v[0]) for key, v in out.items()}, "trials": float(n[np.isfinite(n)].sum())}


def interpolation_checks(segments: Segments, mean: np.ndarray, n: np.ndarray,
                         sd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per checked gap: (the observed deviation m_check - ((1 - lam) m_a + lam m_b), its variance, its
    Welch degrees of freedom). The three cells are independent, so the variance is s_m^2 / n_m +
    (1 - lam)^2 s_a^2 / n_a + lam^2 s_b^2 / n_b."""
    lam = segments.lam
    idx = np.stack([segments.check, segments.left, segments.right], axis=1)
    coef = np.stack([np.ones_like(lam), 1.0 - lam, lam], axis=1)
    nn = n[idx]
    exact = np.isinf(nn)
    parts = np.where(exact, 0.0, coef ** 2 * sd[idx] ** 2 / np.where(exact, 1.0, nn))
    dev = mean[segments.check] - (1.0 - lam) * mean[segments.left] - lam * mean[segments.right]
    return dev, parts.sum(axis=1), welch_df(parts, nn)


def intervals(weights: np.ndarray, mean: np.ndarray, n: np.ndarray, sd: np.ndarray,
              level: float = 0.95, segments: Segments | None = None,
              seg_mass: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``estimate`` of several rates at once: ``weights`` has one row per rate, one column per cell;
    ``mean``, ``n``, ``sd`` one entry per cell (n = inf: exact); ``seg_mass`` one row per rate, one
    column per checked gap (``rate_weights``). Arrays of one entry per rate."""
    exact = np.isinf(n)
    per_map = np.where(exact, 0.0, sd ** 2 / np.where(exact, 1.0, n))
    var_parts = weights ** 2 * per_map  # v_c per rate and cell
    var = var_parts.sum(axis=1)
    df = welch_df(var_parts, n)
    with np.errstate(invalid="ignore"):
        half = np.where(var > 0, sps.t.ppf(0.5 + level / 2, df) * np.sqrt(var), 0.0)
    tail = np.maximum(0.0, 1.0 - weights.sum(axis=1))
    measured = weights @ mean
    interp = np.zeros(weights.shape[0])
    worst = np.zeros(weights.shape[0])
    if segments is not None and len(segments):
        dev, var_s, df_s = interpolation_checks(segments, mean, n, sd)
        which, prev, nxt = segments.gaps()
        group = np.zeros((len(segments), len(prev)))
        group[np.arange(len(segments)), which] = 1.0
        # per k-gap, over the own counts j that share it: the mass-weighted signed deviation and its
        # variance (independent checks; Welch degrees of freedom), so the checks' noise averages
        # over j; the deviation's sign is taken to be the gap's at every j (docs/campaigns.md)
        mass = seg_mass @ group
        signed = (seg_mass * dev) @ group
        parts = seg_mass ** 2 * var_s
        var = parts @ group
        denom = np.where(np.isfinite(df_s) & (parts > 0), parts ** 2 / np.where(np.isfinite(df_s), df_s, 1.0), 0.0) @ group
        with np.errstate(invalid="ignore", divide="ignore"):
            t = np.where(denom > 0, sps.t.ppf(0.5 + level / 2, var ** 2 / np.where(denom > 0, denom, 1.0)), 0.0)
            # per unit of the gap's mass, at most 1 (accuracies lie in [0, 1])
            bound = np.where(mass > 0, np.minimum(1.0, (np.abs(signed) + t * np.sqrt(var)) / np.where(mass > 0, mass, 1.0)),
                             0.0)
        # each gap's mass times the largest bound of the gap and its neighbours along k: a check at one
        # point of a gap may miss a bend beside it
        local = np.maximum(bound, np.maximum(bound[:, prev], bound[:, nxt]))
        interp = (mass * local).sum(axis=1)
        total = seg_mass.sum(axis=1)
        # the mass-weighted mean bound, for the record (0 where the gaps hold next to no mass)
        worst = np.where(total > 1e-12, interp / np.maximum(total, 1e-12), 0.0)
    low = np.maximum(0.0, measured - half - interp)
    high = np.minimum(1.0, measured + tail + half + interp)
    return {"mean": measured + tail / 2, "ci_low": low, "ci_high": high, "ci_halfwidth": (high - low) / 2,
            "sampling_halfwidth": half, "tail_mass": tail, "df": df, "interp_term": interp,
            "interp_check": worst}


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
    honest, possibly wide, interval), the checked gaps of a grid interpolated with their term."""
    if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0.0 <= rate <= 1.0):
        raise ValueError(f"rate={rate!r} is not allowed; use a number in [0, 1]")
    return {key: float(v[0]) for key, v in acc_at_rates(table, [float(rate)], level).items()}


def acc_at_rates(table: dict, rates: Sequence[float], level: float | None = None) -> dict[str, np.ndarray]:
    """``acc_at_rate`` for several rates at once: arrays of one entry per rate."""
    cells = [Cell(**c) for c in table["cells"]]
    keys, roles = [(c.k, c.j) for c in cells], [c.role for c in cells]
    segments = Segments.of(keys, roles)
    n = np.array([c.n for c in cells], dtype=np.float64)
    if not segments.left.size:  # no grid: the weights exactly as before the grid existed
        w, mass = np.stack([np.where(np.array([r == "node" for r in roles]),
                                     cell_weights(keys, table["n_shared"], table["n_own"], r), 0.0) for r in rates]), None
    else:
        w, mass = rate_weights(keys, roles, table["n_shared"], table["n_own"], rates, segments)
    out = intervals(w, np.array([c.mean for c in cells]), n, np.array([c.sd for c in cells]),
                    table["level"] if level is None else level, segments, mass)
    out["trials"] = np.full(len(rates), float(n[np.isfinite(n)].sum()))
    return out


def ak_table(cells: Sequence[Cell], n_shared: int, n_own: int, level: float, **extra) -> dict:
    """The JSON-able a_k table a conditioned campaign logs (conditioned_ak.json): enough to ask for
    any rate afterwards (``acc_at_rate``). A check cell's row says so (``role``)."""
    rows = [{"k": c.k, "j": c.j, "n": c.n if math.isfinite(c.n) else math.inf, "mean": c.mean, "sd": c.sd,
             **({"role": c.role} if c.role != "node" else {})} for c in cells]
    return {"n_shared": int(n_shared), "n_own": int(n_own), "level": float(level), "cells": rows, **extra}


def monotonicity(table: dict, z: float = 2.0) -> dict[str, int]:
    """Whether a_k falls with k in a logged table: over consecutive measured counts k < k' at the same
    j (checks included), how many pairs rise (m_k' > m_k) and how many rise by more than ``z``
    standard errors of the difference. A diagnostic only: the interval does not assume monotonicity."""
    by_j: dict[int, list[dict]] = {}
    for c in table["cells"]:
        by_j.setdefault(c["j"], []).append(c)
    pairs = rises = significant = 0
    for cells in by_j.values():
        cells = sorted(cells, key=lambda c: c["k"])
        for a, b in zip(cells[:-1], cells[1:]):
            se = math.sqrt(sum(c["sd"] ** 2 / c["n"] for c in (a, b) if math.isfinite(c["n"]) and c["n"] > 0))
            pairs += 1
            rises += b["mean"] > a["mean"]
            significant += b["mean"] - a["mean"] > z * se
    return {"pairs": pairs, "rises": rises, "significant_rises": significant}


def rate_at_loss(table: dict, loss: float = 0.01, low: float = 1e-12, high: float = 1e-2, points: int = 241,
                 level: float | None = None) -> dict[str, float]:
    """The rate at which acc(rate) first falls ``loss`` below the clean accuracy a_{0,0}, with an
    interval, on ``points`` log-spaced rates in [low, high]: the estimate is the first grid rate
    whose point estimate is below clean - loss (log-linear between the two grid rates around the
    crossing), the interval from the last grid rate whose lower bound is above it to the first whose
    upper bound is below it (rounded outwards to the grid).
    The interval inverts the pointwise intervals of acc(rate) (each covering at its own rate with the
    table's level), not a simultaneous band: it is the range of rates where the band straddles the
    threshold. A bound that never falls below it within [low, high] is reported as inf (the
    threshold is not reached) and a lower end of ``low`` means the band is below already there."""
    if not (isinstance(loss, (int, float)) and 0.0 < loss < 1.0):
        raise ValueError(f"loss={loss!r} is not allowed; use a fraction of accuracy in (0, 1), e.g. 0.01")
    if not (0.0 < low < high <= 1.0) or points < 2:
        raise ValueError(f"rate grid [{low!r}, {high!r}] x {points!r} is not allowed; use 0 < low < high <= 1, points >= 2")
    clean = next(c["mean"] for c in table["cells"] if c["k"] == 0 and c["j"] == 0)
    threshold = clean - loss
    grid = np.geomspace(low, high, points)
    out = acc_at_rates(table, grid, level)

    def first_below(values: np.ndarray, how: str) -> float:
        below = np.flatnonzero(values < threshold)
        if not below.size:
            return math.inf
        i = int(below[0])
        if i == 0 or how == "up":
            return float(grid[i])
        if how == "down":  # the last grid rate whose whole band is above: rounded outwards
            return float(grid[i - 1])
        # log-linear between the last grid rate above and the first below
        f = (values[i - 1] - threshold) / (values[i - 1] - values[i])
        return float(math.exp(math.log(grid[i - 1]) + f * (math.log(grid[i]) - math.log(grid[i - 1]))))

    return {"clean": float(clean), "threshold": float(threshold), "rate": first_below(out["mean"], "interpolate"),
            "rate_low": first_below(out["ci_low"], "down"), "rate_high": first_below(out["ci_high"], "up"),
            "pointwise": True}


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

