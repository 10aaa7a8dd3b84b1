"""Coverage of the campaign's intervals, and bias of the nested mean (DESIGN.md §2.5, §2.7; issue 24).

    python benchmarks/nested_coverage.py [--repetitions 400] [--maps 1000] threads=1 cache_dir=/tmp/x/cache

On the quick start's models (small_cnn on digits, unprotected and FitAct, from the job's cached
stages): first, once, which of the 360 test images each of --maps fault maps gets right at each rate
(the real injector, trial m = the map of (seed, m); cached in --matrices). Then every campaign is
simulated exactly in numpy from those matrices, with the pipeline's own subset sampler
(designs.DESIGNS["nested"]), stopping rule (stats.should_stop) and intervals (stats.summarize):

- population: the 360 images and the --maps maps (their empirical distributions); each repetition
  draws a pool of 360 images from it (stratified by class, with replacement: an i.i.d. sample, as a
  test split is of the population) and its maps with replacement from the --maps;
- estimands: the mean accuracy over maps on the repetition's pool (``ci_low/ci_high``, the bounded
  interval the pipeline logs, = ``ci_bounded_*``) and over maps and images (``ci_pop_*``, the pool
  being a sample); beside them, labelled "not reported", the Student t-interval over trials
  (``stats.mean_ci``) that ``ci_low/ci_high`` held before: why it was dropped;
- designs: classic with 20 maps (repro_cpu) and 100 maps; nested with n = 5, 7, 25 (ten classes: none
  divides them into equal quotas) and adaptive stopping to --target (min 10, max --max-trials);
  three rates per model, the last where its curve is steepest (``RATES``), and rate 0 (degenerate:
  every classic map is the clean model).

Coverage is the share of repetitions whose interval holds its estimand, with a 95 % Clopper-Pearson
interval (scipy.stats.binomtest). Bias: the nested mean of --bias-trials trials at n = 5 and 25 on the
clean model against the pool accuracy, with the t-interval of that mean, for the new subsets and the
old fixed-quota ones; --cifar-cache adds the repro_cpu VGG16 (2,000-image pool). The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign_efficiency import protected_model  # noqa: E402
from posttrain_settings import load_config  # noqa: E402

from fitact_pipeline import pipeline, stats  # noqa: E402
from fitact_pipeline.data.sampling import StratifiedSampler, randomised_quotas  # noqa: E402
from fitact_pipeline.faults import FAULT_MODELS  # noqa: E402
from fitact_pipeline.faults.designs import DESIGNS, SUBSET_SEED  # noqa: E402
from fitact_pipeline.keys import all_keys  # noqa: E402

#: per protection: rate 0 (degenerate), a mild rate, a middle one and a steep one (the unprotected
#: model is at chance from 3e-5 on)
RATES = {"none": (0.0, 1e-6, 3e-6, 1e-5), "fitact": (0.0, 1e-5, 3e-5, 1e-4)}
#: name -> (its (low, high) from a campaign's summary and per-trial values, its estimand): the two
#: intervals the pipeline logs, and the t-interval it used to log, for comparison only
INTERVALS = {
    "ci (bounded; maps | pool)": (lambda st, accs: (st["ci_low"], st["ci_high"]), "pool"),
    "pop (maps and images)": (lambda st, accs: (st["ci_pop_low"], st["ci_pop_high"]), "population"),
    "t (not reported; for comparison)": (lambda st, accs: stats.mean_ci(accs)[1:], "pool"),
}


def correctness(model, injector, images, labels, rate: float, maps: int, seed: int) -> np.ndarray:
    """(maps, images) booleans: which images fault map m (trial m of ``seed``) leaves correct."""
    out = np.empty((maps, len(labels)), dtype=bool)
    with torch.no_grad():
        for m in range(maps):
            with injector.inject(rate, seed, m):
                out[m] = (model(images).argmax(1) == labels).numpy()
    return out


def matrices(args) -> dict:
    """The correctness matrices of every protection and rate, computed once into --matrices."""
    path = Path(args.matrices)
    found = dict(np.load(path)) if path.exists() else {}
    for protection in args.protections:
        missing = [rate for rate in RATES[protection] if f"{protection}/{rate:g}" not in found]
        if not missing:
            continue
        cfg = load_config("quickstart", [f"protection={protection}", *args.overrides])
        device = pipeline.configure_runtime(cfg)
        model, images, labels = protected_model(cfg, device)
        injector = FAULT_MODELS[cfg.faults.model].build(model, cfg.faults)
        found["labels"] = labels.numpy()
        for rate in missing:
            start = time.perf_counter()
            found[f"{protection}/{rate:g}"] = correctness(model, injector, images, labels, rate,
                                                          1 if rate == 0 else args.maps, 10**6)
            print(f"{protection} {rate:g}: {time.perf_counter() - start:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **found)
    return found


def stratified_pool(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An i.i.d. sample of the population's images, as many per class as the population has."""
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), size=int((labels == c).sum()))
                           for c in np.unique(labels)])


def campaign(correct, labels, pool, design, rng, rep, args) -> list[float]:
    """One simulated campaign's per-trial accuracies: classic (n None, fixed maps) or nested (adaptive)."""
    kind, value = design
    if kind == "classic":
        return correct[rng.integers(len(correct), size=value)][:, pool].mean(axis=1).tolist()
    sampler, accs = StratifiedSampler(torch.as_tensor(labels[pool])), []
    maps = rng.integers(len(correct), size=args.max_trials)
    while len(accs) < args.max_trials:
        for trial in range(len(accs), min(len(accs) + CHUNK, args.max_trials)):
            ids = DESIGNS["nested"].trial_images(sampler, value, rep, trial).numpy()
            accs.append(float(correct[maps[trial], pool[ids]].mean()))
        stop = first_stop(accs, args)
        if stop is not None:
            # the vectorised rule is stats.should_stop's: check it where it stopped and just before
            assert stats.should_stop(accs[:stop], args.target, MIN_TRIALS, args.max_trials)
            assert stop == MIN_TRIALS or not stats.should_stop(accs[:stop - 1], args.target, MIN_TRIALS,
                                                                args.max_trials)
            return accs[:stop]
    return accs


MIN_TRIALS, CHUNK = 10, 50


def first_stop(accs: list[float], args) -> int | None:
    """The first trial count at which stats.should_stop stops (t half-width and unseen tail within
    the target, at least MIN_TRIALS, at most --max-trials), for all prefixes at once; None: not yet."""
    x = np.asarray(accs)
    m = np.arange(1, x.size + 1)
    mean = np.cumsum(x) / m
    var = np.maximum(np.cumsum(x * x) - m * mean**2, 0) / np.maximum(m - 1, 1)
    half = sps.t.ppf(0.975, np.maximum(m - 1, 1)) * np.sqrt(var) / np.sqrt(m)
    tail = (1 - 0.025 ** (1 / m)) * np.maximum(mean, 1 - mean)
    ok = ((np.maximum(half, tail) <= args.target) & (m >= MIN_TRIALS)) | (m >= args.max_trials)
    return int(m[ok][0]) if ok.any() else None


def coverage(correct, labels, design, args) -> dict:
    hits = {name: 0 for name in INTERVALS}
    trials, widths = [], {name: [] for name in INTERVALS}
    truth_population = float(correct.mean())
    for rep in range(args.repetitions):
        rng = np.random.default_rng(rep)
        pool = stratified_pool(labels, rng)
        truth = {"pool": float(correct[:, pool].mean()), "population": truth_population}
        accs = campaign(correct, labels, pool, design, rng, rep, args)
        st = stats.summarize(accs, 0.95, len(pool))
        trials.append(len(accs))
        for name, (interval, estimand) in INTERVALS.items():
            low, high = interval(st, accs)
            # a zero-width interval of equal trials holds its truth up to the float rounding of a mean
            hits[name] += low - 1e-12 <= truth[estimand] <= high + 1e-12
            widths[name].append((high - low) / 2)
    out = {"mean_trials": float(np.mean(trials)), "truth_population": truth_population}
    for name in INTERVALS:
        ci = sps.binomtest(hits[name], args.repetitions).proportion_ci(0.95)
        out[name] = {"covered": hits[name], "coverage": hits[name] / args.repetitions,
                     "ci95": [ci.low, ci.high], "mean_halfwidth": float(np.mean(widths[name]))}
    return out


def old_subset(sampler: StratifiedSampler, n: int, seed: int, trial: int) -> torch.Tensor:
    """The subsets before issue 24: fixed largest-remainder quotas (ties to the lowest class)."""
    return sampler.subset(n, seed * 1_000_003 + trial * 7 + SUBSET_SEED)


def expected_accuracy(correct: np.ndarray, labels: np.ndarray, quotas_per_start: list[list[int]], n: int) -> float:
    """A subset's exact expected accuracy: quotas averaged over the given (equally likely) draws, times
    each class's accuracy (its images are drawn uniformly)."""
    quotas = np.mean(quotas_per_start, axis=0)
    return float(sum(q * correct[labels == c].mean() for c, q in enumerate(quotas)) / n)


def bias(correct: np.ndarray, labels: np.ndarray, n: int, trials: int) -> dict:
    """Nested mean of ``trials`` trials of n images on the clean model against the pool accuracy, and
    the exact expectation of both samplers (randomised: enumerating every start of the rounding)."""
    sampler, out = StratifiedSampler(torch.as_tensor(labels)), {"pool": float(correct.mean())}
    counts, order = sampler.counts.tolist(), list(range(len(sampler.counts)))
    out["exact randomised"] = 100 * (expected_accuracy(correct, labels, [randomised_quotas(
        counts, n, order, start) for start in range(len(labels))], n) - out["pool"])
    out["exact fixed (old)"] = 100 * (expected_accuracy(correct, labels, [sampler.quotas(n)], n) - out["pool"])
    for name, draw in (("randomised", lambda t: DESIGNS["nested"].trial_images(sampler, n, 0, t)),
                       ("fixed (old)", lambda t: old_subset(sampler, n, 0, t))):
        mean, low, high = stats.mean_ci([float(correct[draw(t).numpy()].mean()) for t in range(trials)])
        out[name] = {"bias_points": 100 * (mean - out["pool"]), "ci_points": [100 * (low - out["pool"]),
                                                                               100 * (high - out["pool"])]}
    return out


def cifar_clean(args) -> tuple[np.ndarray, np.ndarray]:
    from hydra.utils import instantiate

    from fitact_pipeline import stages
    from fitact_pipeline.evaluate import correct_mask

    cfg = load_config("repro_cpu", ["model=vgg16_w025", "protection=none", f"cache_dir={args.cifar_cache}", "threads=1",
                                   "progress_bar=false"])
    device = pipeline.configure_runtime(cfg)
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    model = stages.prepare_protected(cfg, datamodule, device, all_keys(cfg, datamodule, device)).protected.eval()
    images, labels = datamodule.eval_tensors(cfg.campaign.eval_split, cfg.campaign.eval_images, cfg.campaign.seed)
    return correct_mask(model, images, labels, 250).numpy(), labels.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protections", nargs="+", default=["none", "fitact"])
    ap.add_argument("--repetitions", type=int, default=400)
    ap.add_argument("--maps", type=int, default=1000)
    ap.add_argument("--target", type=float, default=0.03, help="adaptive stopping: CI half-width")
    ap.add_argument("--max-trials", type=int, default=400)
    ap.add_argument("--bias-trials", type=int, default=40_000)
    ap.add_argument("--matrices", default="/tmp/nested_coverage/matrices.npz")
    ap.add_argument("--cifar-cache", default=None, help="a cache_dir holding the repro_cpu VGG16 baseline")
    ap.add_argument("--only", nargs="*", default=None, help="run only these parts: coverage bias cifar")
    ap.add_argument("--keys", nargs="*", default=None, help="coverage of these protection/rate only, e.g. none/0")
    ap.add_argument("--designs", nargs="*", default=None, help="these designs only, e.g. nested/5 classic/20")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cache_dir=/tmp/x/cache threads=1")
    args = ap.parse_args()
    parts = set(args.only or ["coverage", "bias", "cifar"])
    found, report = matrices(args), {}
    labels = found["labels"]
    designs = [d for d in (("classic", 20), ("classic", 100), ("nested", 5), ("nested", 7), ("nested", 25))
               if args.designs is None or f"{d[0]}/{d[1]}" in args.designs]
    keys = [f"{p}/{rate:g}" for p in args.protections for rate in RATES[p]
            if args.keys is None or f"{p}/{rate:g}" in args.keys]
    for key in (k for k in keys if "coverage" in parts):
        for design in designs:
            start = time.perf_counter()
            res = coverage(found[key], labels, design, args)
            report[f"{key} {design[0]} {design[1]}"] = res
            cells = "; ".join(f"{name} {r['covered']}/{args.repetitions} = {100 * r['coverage']:.1f} % "
                              f"[{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] +-{100 * r['mean_halfwidth']:.2f}"
                              for name, r in res.items() if isinstance(r, dict))
            print(f"{key:12s} {design[0]:7s} {design[1]:3d} ({res['mean_trials']:.0f} trials, "
                  f"{time.perf_counter() - start:.0f} s): {cells}", flush=True)
    pools = {f"quickstart {p}": (found[f"{p}/0"][0], labels) for p in args.protections if "bias" in parts}
    if args.cifar_cache and "cifar" in parts:
        pools["repro_cpu vgg16_w025"] = cifar_clean(args)
    for name, (correct, pool_labels) in pools.items():
        for n in (5, 25):
            res = bias(correct, pool_labels, n, args.bias_trials)
            report[f"bias {name} n={n}"] = res
            print(f"bias {name}, n = {n}, pool {100 * res['pool']:.2f} %: exact expectation - pool: randomised "
                  f"{res['exact randomised']:+.4f}, fixed (old) {res['exact fixed (old)']:+.4f} points; simulated: " + "; ".join(
                f"{k} {r['bias_points']:+.3f} [{r['ci_points'][0]:+.3f}, {r['ci_points'][1]:+.3f}] points"
                for k, r in res.items() if isinstance(r, dict)), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
