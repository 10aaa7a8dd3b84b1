"""The count-conditioned campaign (``campaign.design=conditioned``): measure a_{k,j} on the cells
that carry the mass of the requested rates, then every rate from them (conditioned.py).

Cell (k, j) trial t is the map with exactly k shared and j own faults of (seed, k, j, t)
(exact_count.py) on its own stratified subset of n images (the nested design's subsets, keyed by
(seed, k, j, t)): trial t of a cell is the same map on the same images in every protection that has
the cell. Cells are measured on independent maps and images, which the variance formula needs.

Without ``campaign.adaptive`` every cell gets ``campaign.trials`` maps. With it, every cell gets
``min_trials`` maps, then one map at a time goes to the cell furthest below its share of the maps
(w_c sqrt(k + j): conditioned.next_cell) at the rate furthest from its target, until every rate's
half-width is at most the target or the campaign has used ``max_trials`` maps per requested rate
(the other designs' worst case).

A rate whose shared count spans more than conditioned.MAX_COUNTS values is measured on a grid of
counts, a_k interpolated linearly between them, each gap checked by a held-out cell at its
midpoint; the interval adds the largest checked deviation (conditioned.py).

Each faulted pass starts at the map's first faulted stage from the pool's cached clean activations
(prefix.py: cuts of a chain model, or of any model torch.fx traces): the same predictions as a full
pass in every trial the validation benchmark compared.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from ..checks import fail
from ..evaluate import evaluate_accuracy
from . import conditioned as est
from .designs import DESIGNS
from .exact_count import exact_map, part_sizes
from .fault_models import FAULT_MODELS

log = logging.getLogger(__name__)

#: share of the target half-width the truncated tail may take (the tail adds T / 2 to it)
TAIL_SHARE = 0.2
#: tail mass left out when no target is set
DEFAULT_TAIL = 1e-3


def check_conditioned_config(campaign, faults) -> None:
    """The conditioned design needs faults that persist over a pass (K ~ Binomial(N, p) over stored
    units): a one-line ConfigError otherwise, before any work."""
    if campaign.get("design") != "conditioned":
        return
    if not FAULT_MODELS[faults.get("model")].persistent:
        persistent = ", ".join(name for name, m in FAULT_MODELS.items() if m.persistent)
        fail("campaign.design", "conditioned", f"needs a stored-parameter fault model ({persistent}); "
             f"faults.model={faults.get('model')} draws its faults afresh for every pass")
    if faults.get("rate_unit") == "toolbox":
        fail("faults.rate_unit", "toolbox", "the conditioned design needs a binomial fault count: bit, word or auto")
    if not (campaign.get("adaptive") or {}).get("enabled") and campaign.get("trials", 1) < 2:
        # one map per cell has no spread: the interval would hold the truncation bound only
        fail("campaign.trials", campaign.get("trials", 1), "the conditioned design needs at least 2 maps per "
             "fault count (or campaign.adaptive.enabled=true)")


def tail_mass_allowed(adaptive) -> float:
    """The tail mass the count windows may leave out: a share of the target half-width, or
    DEFAULT_TAIL without one."""
    target = adaptive.get("target_halfwidth") if adaptive else None
    return TAIL_SHARE * target if target else DEFAULT_TAIL


def check_conditioned_counts(injector, rates, adaptive) -> None:
    """Every rate's count windows within the design's limits for this fault space (a rate whose own
    count spans too many values: a one-line ValueError naming it), before any work."""
    n_shared, n_own = part_sizes(injector.space, injector.sampler)
    est.cells_for_rates(n_shared, n_own, rates, tail_mass_allowed(adaptive))


def cell_trial_id(k: int, j: int, trial: int) -> int:
    """A trial id of its own per (k, j, trial), for the image subset (distinct for trial < 10^6)."""
    return (k * 1021 + j + 1) * 1_000_003 + trial


def run_conditioned(model, injector, pool, rates, trials: int, seed: int, batch_size: int, adaptive, level: float,
                    n, progress: bool = True) -> tuple[dict, dict]:
    """(per-rate statistics, a_k table) of a conditioned campaign over ``pool`` (campaign._Pool)."""
    if getattr(injector, "per_pass", False):
        raise ValueError("the conditioned design needs a stored-parameter fault model; this injector draws per pass")
    n_shared, n_own = part_sizes(injector.space, injector.sampler)
    target = adaptive.get("target_halfwidth") if adaptive else None
    eps = tail_mass_allowed(adaptive)
    nodes = est.cells_for_rates(n_shared, n_own, rates, eps)
    # large-K rates: held-out cells between their grid counts check the interpolation (none else)
    checks = est.check_cells(nodes, est.grid_spans(n_shared, n_own, rates, eps))
    keys = sorted(nodes + checks)
    held_out = set(checks)
    roles = ["check" if c in held_out else "node" for c in keys]
    segments, seg_mass = None, None
    if checks:
        segments = est.Segments.of(keys, roles)
        weights, seg_mass = est.rate_weights(keys, roles, n_shared, n_own, rates, segments)
    else:  # every count measured: the weights are the binomial probabilities themselves
        weights = np.stack([est.cell_weights(keys, n_shared, n_own, r) for r in rates])
    clean = float(pool.clean_correct.float().mean())
    first = int(adaptive["min_trials"]) if adaptive else int(trials)
    budget = int(adaptive["max_trials"]) * len(rates) if adaptive else first * (len(keys) - 1)
    bar = tqdm(total=budget, desc="conditioned campaign", disable=not progress, leave=False)
    measure = _measurer(model, injector, pool, seed, batch_size, n, bar, pool.prefix)
    accs = allocate(keys, weights, clean, measure, first, budget, target if adaptive else None, level,
                    1.0 / _images(n, pool), segments, seg_mass)
    bar.close()
    cells = _cells(keys, accs, clean, roles)
    per_rate = {r: {**est.estimate(cells, w, level, segments, None if seg_mass is None else seg_mass[i]),
                    "images_per_trial": _images(n, pool)} for i, (r, w) in enumerate(zip(rates, weights))}
    for rate, st in per_rate.items():
        log.info("rate %g: acc %.4f [%.4f, %.4f], tail %.2g", rate, st["mean"], st["ci_low"], st["ci_high"],
                 st["tail_mass"])
    table = est.ak_table(cells, n_shared, n_own, level, clean_accuracy=clean, images_per_trial=_images(n, pool),
                         seed=seed, fault_model=injector.fault_model, rates=list(rates),
                         trials={f"{k},{j}": a for (k, j), a in accs.items()})
    return per_rate, table


def allocate(keys, weights: np.ndarray, clean: float, measure, first: int, budget: int, target: float | None,
             level: float, sd_floor: float, segments: est.Segments | None = None,
             seg_mass: np.ndarray | None = None) -> dict[tuple[int, int], list[float]]:
    """The accuracies of each cell's maps: ``first`` maps per cell (cell (0, 0) is ``clean``, never
    measured), then, with a ``target`` half-width, one map at a time to the cell furthest below its
    share at the rate (a row of ``weights``) furthest from the target, until every rate is within it or the
    campaign holds ``budget`` maps. ``measure(cell, trial)`` is one map's accuracy: the campaign
    evaluates a map, the validation benchmark resamples precomputed ones. With checked gaps
    (``segments``, large-K rates) the stopping rule includes the interpolation term and a check
    cell's share is its gap's mass at the rate."""
    accs: dict[tuple[int, int], list[float]] = {c: [] for c in keys if c != (0, 0)}
    for cell in accs:
        for _ in range(first):
            accs[cell].append(measure(cell, len(accs[cell])))
    if not target:
        return accs
    # running sums per cell (the exact cell (0, 0): n = inf), so a step costs O(rates x cells)
    exact = np.array([c == (0, 0) for c in keys])
    n = np.array([math.inf if e else len(accs[c]) for c, e in zip(keys, exact)], dtype=np.float64)
    s1 = np.array([clean if e else sum(accs[c]) for c, e in zip(keys, exact)], dtype=np.float64)
    s2 = np.array([0.0 if e else sum(a * a for a in accs[c]) for c, e in zip(keys, exact)], dtype=np.float64)
    faults = np.array([k + j for k, j in keys], dtype=np.float64)
    while np.sum(n[~exact]) < budget:
        mean = np.where(exact, clean, s1 / np.where(exact, 1.0, n))
        with np.errstate(invalid="ignore", divide="ignore"):
            var = np.where(exact | (n < 2), 0.0, (s2 - s1 * mean) / (n - 1))
        # the spread floored for the stopping rule only: a cell whose few maps agreed exactly must
        # not end the campaign on a zero-width interval
        sd = np.where(exact, 0.0, np.maximum(np.sqrt(np.maximum(var, 0.0)), sd_floor))
        widths = est.intervals(weights, mean, n, sd, level, segments, seg_mass)["ci_halfwidth"]
        worst = int(np.argmax(widths / target))
        if widths[worst] <= target:
            break
        share = weights[worst]
        if segments is not None and len(segments):
            # a check bounds the error of its gap's mass (and its neighbours'): it weighs that mass
            share = share.copy()
            share[segments.check] += seg_mass[worst]
        c = est.next_cell(n, faults, share)
        acc = measure(keys[c], len(accs[keys[c]]))
        accs[keys[c]].append(acc)
        n[c], s1[c], s2[c] = n[c] + 1, s1[c] + acc, s2[c] + acc * acc
    return accs


def _measurer(model, injector, pool, seed: int, batch_size: int, n, bar, prefix=None):
    """One map's accuracy on its images; with a ``prefix`` cache (prefix.py) the pass starts at the
    map's first faulted stage."""
    nested = DESIGNS["nested"]

    def measure(cell: tuple[int, int], trial: int) -> float:
        k, j = cell
        x, y, ids = pool.trial_set(nested, n, seed, cell_trial_id(k, j, trial))
        bar.update(1)
        with injector.inject_sampled(exact_map(injector, k, j, seed, trial)) as fmap:
            if fmap.effective_flips == 0:  # no changed bit: the clean model (stuck bits that held)
                return int(pool.clean_correct[ids].sum()) / len(ids)
            if prefix is not None:
                return int(prefix.correct(prefix.first_stage(fmap), ids, y).sum()) / len(ids)
            return evaluate_accuracy(model, x, y, batch_size, None, ids)
    return measure


def _cells(keys, accs, clean: float, roles) -> list[est.Cell]:
    return [est.Cell(0, 0, math.inf, clean, 0.0) if c == (0, 0) else replace(est.cell_summary(*c, accs[c]), role=r)
            for c, r in zip(keys, roles)]


def _images(n, pool) -> int:
    return len(pool.labels) if n is None else min(int(n), len(pool.labels))
