"""Validation of the count-conditioned design (issue 27), on the quick start's model (small_cnn on digits) by default.

    python benchmarks/conditioned_validation.py [--protections none fitact] [--rates 1e-7 1e-6 1e-5]
        [--target 0.005] [--repetitions 200] [overrides: cache_dir=... tracking.root=...]
    (after --skip, put -- before the overrides: --skip takes every word that follows it)

1. Agreement with brute force: per protection and rate, the conditioned campaign and a nested
   campaign (maps at the rate itself), both run adaptively to +-target (the nested one never with
   fewer than --nested-min maps); the two intervals and whether the difference lies within the
   combined half-width sqrt(h_c^2 + h_n^2).
2. Coverage of the conditioned interval over --repetitions repetitions, simulated cheaply: every cell
   the estimator uses (and the cells of a 100x smaller tail) gets --pool-maps maps evaluated once
   (each on its own image subset); a repetition is the design's adaptive allocation with each map
   drawn with replacement from its cell's pool. The truth of that resampled world is exactly
   sum_c w_c(p) poolmean_c over the wider cell set (the rest of the tail < 1e-6 of the mass), so
   the share of intervals containing it is the interval's coverage, stopping rule and Welch-t
   degrees of freedom included.
3. Prefix reuse (faults/prefix.py): per rate, --prefix-maps non-empty maps drawn at the rate, each
   evaluated on its n images by a full pass and by a pass started at its first faulted stage: the
   trials whose accuracies differ, the ideal saving (multiply-accumulates before the first faulted
   stage over a full pass, averaged over the maps) and the measured one (1 - time with / without).
4. Cost (--efficiency-rates, default 1e-9 1e-8 1e-7, to +---efficiency-target): per rate, a
   conditioned campaign of that rate alone and a nested one (never before --nested-min maps), and
   one conditioned campaign of all those rates: maps, image evaluations actually run (maps that
   change no bit are read from the clean model and cost none), wall time.
The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign_efficiency import protected_model  # noqa: E402
from posttrain_settings import load_config  # noqa: E402

from fitact_pipeline import pipeline  # noqa: E402
from fitact_pipeline.evaluate import evaluate_accuracy, predictions  # noqa: E402
from fitact_pipeline.faults import FAULT_MODELS, run_campaign  # noqa: E402
from fitact_pipeline.faults import conditioned as est  # noqa: E402
from fitact_pipeline.faults.campaign import _Pool  # noqa: E402
from fitact_pipeline.faults.conditioned_campaign import TAIL_SHARE, _measurer, allocate  # noqa: E402
from fitact_pipeline.faults.designs import DESIGNS  # noqa: E402
from fitact_pipeline.faults.exact_count import part_sizes  # noqa: E402
from fitact_pipeline.faults.prefix import PrefixCache, space_bits  # noqa: E402

BATCH, MIN_TRIALS = 360, 3


class _NoBar:
    def update(self, _):
        pass


def agreement(model, injector, images, labels, args) -> dict:
    adaptive = {"target_halfwidth": args.target, "min_trials": MIN_TRIALS, "max_trials": args.max_trials}
    start = time.perf_counter()
    cond = run_campaign(model, injector, images, labels, args.rates, 0, args.seed, BATCH, adaptive=adaptive,
                        progress=False, design="conditioned", images_per_trial=args.images)
    cond_s = time.perf_counter() - start
    out = {"conditioned_maps": int(sum(len(a) for a in cond.ak_table["trials"].values())), "conditioned_s": cond_s}
    for rate in args.rates:
        start = time.perf_counter()
        nest = run_campaign(model, injector, images, labels, [rate], 0, args.seed + 1, BATCH, progress=False,
                            design="nested", images_per_trial=args.images,
                            adaptive={**adaptive, "min_trials": args.nested_min,
                                      "max_trials": args.nested_max}).per_rate[rate]
        c = cond.per_rate[rate]
        combined = math.hypot(c["ci_halfwidth"], nest["ci_halfwidth"])
        out[rate] = {"conditioned": [c["mean"], c["ci_low"], c["ci_high"]], "tail_mass": c["tail_mass"],
                     "nested": [nest["mean"], nest["ci_low"], nest["ci_high"]], "nested_maps": nest["trials"],
                     "nested_s": time.perf_counter() - start, "difference": c["mean"] - nest["mean"],
                     "combined_halfwidth": combined, "agree": abs(c["mean"] - nest["mean"]) <= combined}
        print(f"  {rate:g}: conditioned {100 * c['mean']:.2f} [{100 * c['ci_low']:.2f}, {100 * c['ci_high']:.2f}] "
              f"(tail {c['tail_mass']:.1e}); nested {100 * nest['mean']:.2f} [{100 * nest['ci_low']:.2f}, "
              f"{100 * nest['ci_high']:.2f}] over {nest['trials']} maps; difference "
              f"{100 * (c['mean'] - nest['mean']):+.2f}"
              f" within +-{100 * combined:.2f}: {out[rate]['agree']}; interpolation term {100 * c['interp_term']:.3f}",
              flush=True)
    out["monotonicity"] = est.monotonicity(cond.ak_table)
    print(f"  conditioned: {out['conditioned_maps']} maps for all rates, {cond_s:.1f} s; a_k along k: "
          f"{out['monotonicity']}", flush=True)
    return out


def coverage(model, injector, images, labels, args) -> dict:
    pool = _Pool(images, labels, predictions(model, images, BATCH))
    clean = float(pool.clean_correct.float().mean())
    n_shared, n_own = part_sizes(injector.space, injector.sampler)
    eps = TAIL_SHARE * args.target
    nodes = est.cells_for_rates(n_shared, n_own, args.rates, eps)
    checks = est.check_cells(nodes, est.grid_spans(n_shared, n_own, args.rates, eps))
    keys = sorted(nodes + checks)
    held_out = set(checks)
    roles = ["check" if c in held_out else "node" for c in keys]
    segments = est.Segments.of(keys, roles)
    # the truth's cells: every count (no grid, whatever the rate), all but 1e-6 of the mass
    wide = est.cells_for_rates(n_shared, n_own, args.rates, 1e-6, max_counts=10 ** 9)
    measure = _measurer(model, injector, pool, args.seed, BATCH, args.images, _NoBar())
    start = time.perf_counter()
    maps = {c: np.array([measure(c, t) for t in range(args.pool_maps)]) for c in wide if c != (0, 0)}
    maps_s = time.perf_counter() - start
    pool_mean = {c: (clean if c == (0, 0) else float(maps[c].mean())) for c in wide}
    weights, seg_mass = est.rate_weights(keys, roles, n_shared, n_own, args.rates, segments)
    truth = [float(est.cell_weights(wide, n_shared, n_own, r) @ np.array([pool_mean[c] for c in wide]))
             for r in args.rates]
    rng = np.random.default_rng(args.seed)
    covered = np.zeros(len(args.rates), dtype=int)
    widths, sizes, terms = [], [], []
    for _ in range(args.repetitions):
        accs = allocate(keys, weights, clean, lambda c, t: float(maps[c][rng.integers(args.pool_maps)]), MIN_TRIALS,
                        args.max_trials * len(args.rates), args.target, 0.95, 1.0 / args.images, segments, seg_mass)
        cells = [est.Cell(0, 0, math.inf, clean, 0.0) if c == (0, 0) else replace(est.cell_summary(*c, accs[c]), role=r)
                 for c, r in zip(keys, roles)]
        results = [est.estimate(cells, w, 0.95, segments, m) for w, m in zip(weights, seg_mass)]
        covered += [r["ci_low"] <= t <= r["ci_high"] for r, t in zip(results, truth)]
        widths.append([r["ci_halfwidth"] for r in results])
        terms.append([r["interp_term"] for r in results])
        sizes.append(sum(len(a) for a in accs.values()))
    out = {"cells": len(keys), "truth_cells": len(wide), "pool_maps": args.pool_maps, "pool_seconds": maps_s,
           "repetitions": args.repetitions, "mean_maps": float(np.mean(sizes))}
    for i, rate in enumerate(args.rates):
        low, high = sps.binomtest(int(covered[i]), args.repetitions).proportion_ci(0.95)
        out[rate] = {"truth": truth[i], "covered": int(covered[i]), "coverage": covered[i] / args.repetitions,
                     "coverage_ci95": [low, high], "mean_halfwidth": float(np.mean([w[i] for w in widths])),
                     "mean_interp_term": float(np.mean([t[i] for t in terms]))}
        print(f"  {rate:g}: truth {100 * truth[i]:.3f} %, covered {covered[i]}/{args.repetitions} = "
              f"{100 * covered[i] / args.repetitions:.1f} % [{100 * low:.1f}, {100 * high:.1f}], mean half-width "
              f"{100 * out[rate]['mean_halfwidth']:.3f} points (interpolation term {100 * out[rate]['mean_interp_term']:.3f})",
              flush=True)
    print(f"  {len(keys)} cells ({len(checks)} checks; {len(wide)} for the truth) x {args.pool_maps} pooled maps in {maps_s:.0f} s; "
          f"{out['mean_maps']:.0f} maps per repetition", flush=True)
    return out


def prefix_reuse(model, injector, images, labels, args) -> dict:
    cache = PrefixCache.build(model, images, BATCH, space_bits(injector.space))
    if cache is None:
        return {"skipped": "the model has no cuts (fx cannot trace it)"}
    print(f"  {len(cache.stages)} stages, cache {sum(t.numel() * t.element_size() for t in cache.inputs) / 2**20:.0f} MiB",
          flush=True)
    out = {}
    for rate in args.rates:
        maps, trial = [], 0
        while len(maps) < args.prefix_maps:
            fmap = injector.sample(rate, args.seed, trial)
            if len(fmap):
                maps.append((fmap, DESIGNS["nested"].trial_images(labels, args.images, args.seed, trial)))
            trial += 1
        full_s = with_s = 0.0
        differ, ideal = 0, []
        for fmap, ids in maps:
            with injector.inject_sampled(fmap):
                start = time.perf_counter()
                full = evaluate_accuracy(model, images[ids], labels[ids], BATCH)
                mid = time.perf_counter()
                first = cache.first_stage(fmap)
                reused = int(cache.correct(first, ids, labels[ids]).sum()) / len(ids)
                with_s += time.perf_counter() - mid
                full_s += mid - start
            differ += reused != full
            ideal.append(cache.ideal_saving(first))
        out[rate] = {"maps": len(maps), "differ": differ, "ideal_saving": float(np.mean(ideal)),
                     "measured_saving": 1 - with_s / full_s, "full_s": full_s, "prefix_s": with_s}
        print(f"  {rate:g}: {len(maps)} maps, {differ} differ; saving ideal {100 * np.mean(ideal):.0f} %, measured "
              f"{100 * (1 - with_s / full_s):.0f} % (speed-up {full_s / with_s:.2f}x)", flush=True)
    return out


def efficiency(model, injector, images, labels, args) -> dict:
    target = args.efficiency_target
    adaptive = {"target_halfwidth": target, "min_trials": MIN_TRIALS, "max_trials": args.nested_max}
    out = {}

    def conditioned(rates):
        start = time.perf_counter()
        res = run_campaign(model, injector, images, labels, rates, 0, args.seed, BATCH, adaptive=adaptive,
                           progress=False, design="conditioned", images_per_trial=args.images)
        maps = int(sum(len(a) for a in res.ak_table["trials"].values()))
        return res, {"maps": maps, "image_evals": maps * args.images, "seconds": time.perf_counter() - start}

    for rate in args.efficiency_rates:
        res, cost = conditioned([rate])
        start = time.perf_counter()
        nest = run_campaign(model, injector, images, labels, [rate], 0, args.seed + 1, BATCH, progress=False,
                            design="nested", images_per_trial=args.images,
                            adaptive={**adaptive, "min_trials": args.nested_min})
        seconds = time.perf_counter() - start
        run = sum(t["flips"] > 0 for t in nest.trials)
        st, c = nest.per_rate[rate], res.per_rate[rate]
        out[rate] = {"conditioned": {**cost, "mean": c["mean"], "halfwidth": c["ci_halfwidth"]},
                     "nested": {"maps": st["trials"], "image_evals": run * args.images, "seconds": seconds,
                                "mean": st["mean"], "halfwidth": st["ci_halfwidth"]}}
        print(f"  {rate:g}: conditioned {100 * c['mean']:.3f} +-{100 * c['ci_halfwidth']:.3f}: {cost['maps']} maps, "
              f"{cost['image_evals']} image evaluations, {cost['seconds']:.1f} s; nested {100 * st['mean']:.3f} "
              f"+-{100 * st['ci_halfwidth']:.3f}: {st['trials']} maps ({run} not empty), {run * args.images} image "
              f"evaluations, {seconds:.1f} s", flush=True)
    res, cost = conditioned(list(args.efficiency_rates))
    out["all"] = cost
    print(f"  all {len(args.efficiency_rates)} rates in one conditioned campaign: {cost['maps']} maps, "
          f"{cost['image_evals']} image evaluations, {cost['seconds']:.1f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", default="quickstart", help="the job config's experiment (with overrides, "
                    "e.g. repro_cpu_nested model=vgg16_w025)")
    ap.add_argument("--protections", nargs="+", default=["none", "fitact"])
    ap.add_argument("--rates", nargs="+", type=float, default=[1e-7, 1e-6, 1e-5])
    ap.add_argument("--target", type=float, default=0.005)
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--max-trials", type=int, default=2000)
    ap.add_argument("--repetitions", type=int, default=200)
    ap.add_argument("--pool-maps", type=int, default=60)
    # brute force at low rates: most maps are empty, so a small first sample can hold no harmful map
    # at all and stop on a narrow, wrong interval (30 maps did at 1e-7); a large minimum guards it
    ap.add_argument("--nested-min", type=int, default=1000)
    ap.add_argument("--nested-max", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prefix-maps", type=int, default=300)
    ap.add_argument("--efficiency-rates", nargs="+", type=float, default=[1e-9, 1e-8, 1e-7])
    ap.add_argument("--efficiency-target", type=float, default=0.002)
    ap.add_argument("--skip", nargs="*", default=[], choices=["agreement", "coverage", "prefix", "efficiency"])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cache_dir=/work/main/.cache")
    args = ap.parse_args()
    report = {}
    for protection in args.protections:
        cfg = load_config(args.experiment, [f"protection={protection}", *args.overrides])
        device = pipeline.configure_runtime(cfg)
        model, images, labels = protected_model(cfg, device)
        injector = FAULT_MODELS[cfg.faults.model].build(model, cfg.faults)
        report[protection] = {}
        for part, run in (("agreement", agreement), ("coverage", coverage), ("prefix", prefix_reuse),
                          ("efficiency", efficiency)):
            if part not in args.skip:
                print(f"{protection}: {part}", flush=True)
                report[protection][part] = run(model, injector, images, labels, args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
