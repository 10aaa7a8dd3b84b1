"""Which runs count and which curves, rows and boxes the report draws: pure functions of the runs
(no MLflow, no files), so every choice the report makes is testable on its own."""
from __future__ import annotations

import itertools
import math
import re
import statistics
from collections import defaultdict
from typing import Any, Callable

from .. import stats
from ..protect import PROTECTIONS
from ..faults.designs import DESIGNS
from .runs import JobRun, patterns

Curve = dict[float, dict[str, float]]


def variant_sort_key(variant: str) -> tuple:
    """Variants are a protection name, optionally followed by a qualifier (`gbrelu b=0.5`): by the
    protection registry's order, then GBReLU bounds by value, not as text (b=2 before b=16)."""
    bound = re.search(r" b=([0-9.e+-]+)", variant)
    return (PROTECTIONS.index(variant.split(" ")[0]), float(bound.group(1)) if bound else -math.inf, variant)


def merge_curves(jobs: list[JobRun]) -> dict[tuple, Curve]:
    """{(context, variant): {rate: stats}}: jobs of one rate each merge into one curve; runs of
    another context (seed, training, fault settings) stay separate curves. Oldest first, so a newer
    run's rates win. The sweep figure and the report both draw these."""
    out: dict[tuple, Curve] = defaultdict(dict)
    for job in sorted(jobs, key=lambda j: j.start_time):
        out[(job.context, job.variant)].update(job.curve)
    return {k: v for k, v in out.items() if v}


def panels(curves: dict[tuple, Any], notes: list[str]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Group (context, variant) items by panel: (model, dataset, fault model). Two contexts in one
    panel (other seed, other training) would give two curves of one name: the later gets a
    numbered label."""
    out: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(dict)
    for (context, variant), value in sorted(curves.items(), key=lambda kv: (repr(kv[0][0]), kv[0][1])):
        key = tuple(context[:3])
        label, n = variant, 1
        while label in out[key]:
            n += 1
            label = f"{variant} (setting #{n})"
        if n > 1:
            notes.append(f"{key[0]} on {key[1]}: runs of {variant} differ in seed/training/fault settings; "
                         f"labelled '{label}'.")
        out[key][label] = value
    return dict(out)


def pick_panel(available, model: str | None, dataset: str | None, size) -> tuple | None:
    keys = [k for k in available if (model is None or k[0] == model) and (dataset is None or k[1] == dataset)]
    if not keys:
        return None
    return sorted(keys, key=lambda k: (-size(k), k))[0]


def fig1_groups(jobs: list[JobRun]) -> dict[tuple, list[JobRun]]:
    """GBReLU bound sweeps, one group per setting (context and the sites that carry the bound)."""
    groups: dict[tuple, list[JobRun]] = defaultdict(list)
    for job in jobs:
        given = job.protection in PROTECTIONS and PROTECTIONS[job.protection].given_bounds
        if given and "protection.bound" in job.params:
            groups[job.context + (("protection.sites", job.params.get("protection.sites")),)].append(job)
    return dict(groups)


def fig1_points(group: list[JobRun]) -> tuple[dict[float, dict], str]:
    """({bound: {"clean", "rates": {rate: stats}}}, title) of one GBReLU setting."""
    points: dict[float, dict] = {}
    for job in group:
        entry = points.setdefault(float(job.params["protection.bound"]),
                                  {"clean": job.metrics.get("clean_accuracy", math.nan), "rates": {}})
        entry["rates"].update({r: s for r, s in job.curve.items() if "mean" in s})
    job = group[0]
    sites = job.params.get("protection.sites", "None")
    title = (f"{job.model} on {job.dataset}: GBReLU at " + ("every site" if sites == "None" else f"site {sites}")
             + f", faults in {patterns(job.params.get('faults.include', '[]')) or 'every layer'}")
    return points, title


def by_panel(jobs: list[JobRun]) -> dict[tuple[str, str, str], list[JobRun]]:
    out: dict[tuple[str, str, str], list[JobRun]] = defaultdict(list)
    for job in jobs:
        out[(job.model, job.dataset, job.fault_model)].append(job)
    return dict(out)


TrialsOf = Callable[[JobRun], dict[tuple[float, int], float]]


def trial_accuracies(jobs: list[JobRun], trials_of: TrialsOf) -> dict[tuple, dict[float, list[float]]]:
    """{(context, variant): {rate: [accuracy of every trial]}} for Fig. 5's boxes."""
    out: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        for (rate, _), acc in sorted(trials_of(job).items()):
            out[(job.context, job.variant)][rate].append(acc)
    return {k: dict(v) for k, v in out.items()}


# Table I: the protected model vs its ReLU original, measured in the same job (overhead.py).
TABLE1 = ("model", "dataset", "protection", "inference_form", "runs", "inference_ms_reference",
          "inference_ms_protected", "runtime_overhead", "model_bytes_reference", "model_bytes_protected",
          "memory_overhead", "train_time_s", "posttrain_time_s", "posttrain_overhead")


def _median_metric(jobs: list[JobRun], name: str) -> float:
    values = [j.metrics[name] for j in jobs if name in j.metrics]
    if name == "posttrain_overhead" and not values:
        values = [j.metrics["posttrain_time_s"] / j.metrics["train_time_s"] for j in jobs
                  if "posttrain_time_s" in j.metrics and j.metrics.get("train_time_s")]
    return float(statistics.median(values)) if values else math.nan


def table1_rows(jobs: list[JobRun]) -> list[dict]:
    """One row per (model, dataset, protection variant, inference form) that measured overheads;
    several jobs (one per rate) measure the same model: the median damps a noisy machine."""
    groups: dict[tuple, list[JobRun]] = defaultdict(list)
    for job in jobs:
        if job.protection != "none" and "runtime_overhead" in job.metrics:
            form = PROTECTIONS[job.protection].inference_form(job.params) if job.protection in PROTECTIONS else "-"
            groups[(job.model, job.dataset, job.variant, form)].append(job)
    fitact = variant_sort_key("fitact")
    order = sorted(groups, key=lambda k: (k[0], k[1], variant_sort_key(k[2]) != fitact, variant_sort_key(k[2])))
    return [{"model": model, "dataset": dataset, "protection": variant, "inference_form": form,
             "runs": len(groups[(model, dataset, variant, form)]),
             **{name: _median_metric(groups[(model, dataset, variant, form)], name) for name in TABLE1[5:]}}
            for model, dataset, variant, form in order]


def band(st: dict[str, float]) -> tuple[float, float]:
    """The interval a figure draws: the bounded one (the mean over fault maps on the evaluation pool;
    holds for any distribution of the per-trial values in [0, 1], docs/campaigns.md "Intervals"),
    logged as ci_low/ci_high and ci_bounded_*. Reading ci_bounded_* first also draws the bounded
    interval of runs that logged a t-interval as ci_low/ci_high beside it (before stats.INTERVAL);
    runs older still have only their t-interval, drawn for them."""
    if "ci_bounded_low" in st and "ci_bounded_high" in st:
        return st["ci_bounded_low"], st["ci_bounded_high"]
    return st["ci_low"], st["ci_high"]


PRECISION = ("model", "dataset", "fault_model", "protection", "design", "rate", "trials", "images_per_trial",
             "image_evaluations", "mean", "ci_halfwidth")


def _param_count(text: str | None) -> float:
    """A logged image count; nan for null, ``all`` (the count is in the run's per-rate stats) or none."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def precision_rows(jobs: list[JobRun]) -> list[dict]:
    """Per curve and rate: the design, M trials, n images per trial, M x n image evaluations and the
    CI half-width reached (runs before the designs existed: classic, n = campaign.eval_images)."""
    rows = []
    for job in sorted(jobs, key=lambda j: (j.context[:3], variant_sort_key(j.variant))):
        design = job.params.get("campaign.design", "classic")
        for rate, st in sorted(job.curve.items()):
            if "mean" not in st:
                continue
            n = st.get("images_per_trial", _param_count(job.params.get("campaign.eval_images")))
            low, high = band(st) if "ci_low" in st or "ci_bounded_low" in st else (math.nan, math.nan)
            half = (high - low) / 2  # the interval the figures draw (older runs: their t ci_halfwidth)
            rows.append({"model": job.model, "dataset": job.dataset, "fault_model": job.fault_model,
                         "protection": job.variant, "design": design, "rate": rate, "trials": st.get("trials"),
                         "images_per_trial": n, "image_evaluations": st.get("trials", math.nan) * n,
                         "mean": st["mean"], "ci_halfwidth": half})
    return rows


SUMMARY = ("model", "dataset", "fault_model", "protection", "clean_accuracy", "rates", "rate_min", "rate_max", "auc",
           "critical_level", "critical_rate", "sdc_at_max", "critical_sdc_at_max")
PAIRED = ("model", "dataset", "fault_model", "protection_a", "protection_b", "rate", "pairs", "mean_diff", "ci_low",
          "ci_high", "wilcoxon_p")


def summary_rows(curves: dict[tuple, Curve], jobs: list[JobRun], level: float, relative: bool) -> list[dict]:
    """Per curve: clean accuracy, area under the curve and the critical rate (stats.py)."""
    clean = {(j.context, j.variant): j.metrics.get("clean_accuracy", math.nan) for j in jobs}
    outcomes = merge_outcomes(jobs)
    rows = []
    for (context, variant), curve in sorted(curves.items(), key=lambda kv: (kv[0][0][:3], variant_sort_key(kv[0][1]))):
        rates = sorted(r for r in curve if r > 0 and "mean" in curve[r])
        means = [curve[r]["mean"] for r in rates]
        threshold = level * clean[(context, variant)] if relative else level
        rows.append({"model": context[0], "dataset": context[1], "fault_model": context[2], "protection": variant,
                     "clean_accuracy": clean[(context, variant)], "rates": len(rates),
                     "rate_min": min(rates) if rates else math.nan, "rate_max": max(rates) if rates else math.nan,
                     "auc": stats.resilience_auc(rates, means) if rates else math.nan, "critical_level": threshold,
                     "critical_rate": stats.critical_rate(rates, means, threshold) if rates else math.nan,
                     **_outcomes_at(outcomes.get((context, variant), {}), max(rates) if rates else None)})
    return rows


def merge_outcomes(jobs: list[JobRun]) -> dict[tuple, dict[float, dict[str, dict[str, float]]]]:
    """{(context, variant): {rate: {outcome: stats}}}, merged as merge_curves merges accuracy."""
    out: dict[tuple, dict] = defaultdict(dict)
    for job in sorted(jobs, key=lambda j: j.start_time):
        out[(job.context, job.variant)].update(job.outcomes)
    return {k: v for k, v in out.items() if v}


def _outcomes_at(outcomes: dict, rate: float | None) -> dict[str, float]:
    """Mean SDC and critical rates at ``rate`` (the curve's highest), NaN where not logged."""
    at = outcomes.get(rate, {})
    return {"sdc_at_max": at.get("sdc", {}).get("mean", math.nan),
            "critical_sdc_at_max": at.get("critical", {}).get("mean", math.nan)}


def paired_rows(jobs: list[JobRun], trials_of: TrialsOf, level: float) -> list[dict]:
    """Every pair of variants of one context, at every rate both ran: the paired difference over
    trials with the same (rate, trial) index, i.e. the same fault map in the shared tensors."""
    trials: dict[tuple, dict[str, dict[tuple[float, int], float]]] = defaultdict(lambda: defaultdict(dict))
    for job in jobs:
        trials[job.context][job.variant].update(trials_of(job))
    rows = []
    for context, by_variant in sorted(trials.items(), key=lambda kv: repr(kv[0])):
        # B is the earlier protection in the registry's order, so every row vs `none` reads "A - none"
        for b, a in itertools.combinations(sorted(by_variant, key=variant_sort_key), 2):
            common = sorted(set(by_variant[a]) & set(by_variant[b]))
            for rate in sorted({r for r, _ in common}):
                keys = [k for k in common if k[0] == rate]
                res = stats.paired_difference([by_variant[a][k] for k in keys], [by_variant[b][k] for k in keys], level)
                rows.append({"model": context[0], "dataset": context[1], "fault_model": context[2],
                             "protection_a": a, "protection_b": b,
                             "rate": rate, **res})
    return rows


def band_caption(jobs) -> str:
    """Which interval the curves' bands are: the designs' intervals of record
    (designs.CampaignDesign.interval), each named when the jobs mix designs of different intervals."""
    by_text: dict[str, list[str]] = {}
    for name in sorted({j.params.get("campaign.design", "classic") for j in jobs} & set(DESIGNS)):
        by_text.setdefault(DESIGNS[name].interval, []).append(name)
    if len(by_text) <= 1:
        return next(iter(by_text), DESIGNS["classic"].interval)
    return "; ".join(f"{'/'.join(names)}: {text}" for text, names in by_text.items())
