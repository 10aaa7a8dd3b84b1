"""Is the FT-ClipAct search budget large enough? Thresholds of a small budget (repro_cpu's: 4 candidates
x 2 iterations x 2 maps x 128 images) against a finer one, on the quick start's model.

    python benchmarks/clipact_search_stability.py                      # small_cnn on digits, ~10 min
    python benchmarks/clipact_search_stability.py --seeds 5 --budget 4,2,2,128 --budget 8,3,8,300

Trains small_cnn on digits (the quick start's settings), folds BatchNorm, profiles, and runs the
search (DESIGN.md §2.4) at each --budget: every budget but the last with --seeds search seeds (other
fault maps and other validation images), so that its own noise shows; the last, the finest, once as
the reference. For every site it prints the thresholds, their mean and 95 % t-interval over seeds,
and the reference's distance from that mean. Then every searched model runs the same fault campaign
on the test split (the same maps for all: paired), and a table prints each model minus the reference
per rate, with the paired 95 % CI and what the tests of fitact_pipeline/claims.py establish (better,
worse, a tie within --margin; Holm across the table): a budget is stable where its thresholds, from
any seed, give the reference's accuracy within the margin.
The last line is JSON with the thresholds and the decisions.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline import claims, stats  # noqa: E402
from fitact_pipeline.data import DigitsDataModule  # noqa: E402
from fitact_pipeline.faults import FaultInjector, run_campaign  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model  # noqa: E402
from fitact_pipeline.protect.clipact_search import clipact_search  # noqa: E402
from fitact_pipeline.training import train_baseline  # noqa: E402

REPRO = (4, 2, 2, 128)  # conf/experiment/repro_cpu.yaml protection.search


def budget(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4 or parts[0] < 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"budget {text!r}: expected candidates,iterations,trials,images "
                                         "(candidates >= 2, the others >= 1)")
    return parts


def trained_model(seed: int):
    """The quick start's baseline: small_cnn (width 1) trained 15 epochs on digits, BatchNorm folded."""
    logging.getLogger("lightning").setLevel(logging.ERROR)
    dm = DigitsDataModule(batch_size=64, seed=seed)
    dm.setup("fit")
    model = build_model("small_cnn", 10, 1, 1.0)
    train_baseline(model, dm, {"epochs": 15, "lr": 0.05, "warmup_epochs": 1, "progress_bar": False}, seed=seed)
    return dm, fold_batchnorm(model.eval())


def search(base, profile, dm, b, rates, seed) -> dict[str, float]:
    candidates, iterations, trials, images = b
    model = protect_model(copy.deepcopy(base), "clipact", "layer", profile)
    x, y = dm.eval_tensors("val", images, seed)
    return clipact_search(model, x, y, {"fmt": "fixed"}, rates=rates, candidates=candidates,
                          iterations=iterations, trials=trials, seed=seed)


def campaign(base, profile, thresholds, x, y, rates, trials) -> dict[float, list[float]]:
    """Per-trial accuracies of the model with these thresholds (same maps for every model: paired)."""
    model = protect_model(copy.deepcopy(base), "clipact", "layer", profile)
    for site, t in thresholds.items():
        with torch.no_grad():
            model.get_submodule(site).bound.fill_(t)
    result = run_campaign(model, FaultInjector(model, fmt="fixed"), x, y, rates=rates, trials=trials,
                          seed=1000, progress=False)
    out: dict[float, list[float]] = {r: [] for r in rates}
    for t in result.trials:
        out[float(t["rate"])].append(float(t["accuracy"]))
    return out


def threshold_table(searched: dict[str, list[dict]], reference: str) -> list[str]:
    """Per site and budget: the thresholds per seed, their mean [95 % CI], and the reference's distance
    from that mean (``*``: outside the CI)."""
    ref = searched[reference][0]
    lines = ["| site | budget | thresholds per seed | mean [95 % CI] over seeds | reference - mean |",
             "|---|---|---|---|---|"]
    for site in ref:
        lines.append(f"| {site} | {reference} (reference) | {ref[site]:.3f} | - | - |")
        for name, runs in searched.items():
            if name == reference:
                continue
            values = [r[site] for r in runs]
            mean, low, high = stats.mean_ci(values)
            star = "" if low <= ref[site] <= high else " *"
            lines.append(f"| {site} | {name} | {', '.join(f'{v:.3f}' for v in values)} | {mean:.3f} [{low:.3f}, "
                         f"{high:.3f}] | {ref[site] - mean:+.3f}{star} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="search seeds of every budget but the reference")
    ap.add_argument("--budget", type=budget, action="append", help="candidates,iterations,trials,images "
                    "(repeatable; the last is the reference, searched once). Default: 4,2,2,128 (repro_cpu), "
                    "5,3,4,300 (conf/protection/clipact.yaml, 300 = every digits validation image), 8,3,8,300")
    ap.add_argument("--rates", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4],
                    help="search rates (small_cnn: the unprotected model goes from mild loss to collapse)")
    ap.add_argument("--campaign-rates", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4, 3e-4])
    ap.add_argument("--trials", type=int, default=20, help="fault maps per rate of the test campaign")
    ap.add_argument("--margin", type=float, default=0.01, help="equivalence margin, accuracy fraction")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.seeds < 2 or args.trials < 2 or not args.margin > 0:
        sys.exit(f"--seeds={args.seeds} and --trials={args.trials} must be >= 2, --margin={args.margin} positive")
    torch.set_num_threads(args.threads)
    budgets = args.budget or [REPRO, (5, 3, 4, 300), (8, 3, 8, 300)]
    if len(budgets) < 2:
        sys.exit("give at least two --budget values: the last is the reference")
    started = time.perf_counter()
    dm, base = trained_model(0)
    profile = profile_activations(base, dm.profile_dataloader(1137), 1137)
    names = [",".join(map(str, b)) for b in budgets]
    reference = names[-1]
    searched = {n: [search(base, profile, dm, b, args.rates, seed)
                    for seed in (range(1, args.seeds + 1) if n != reference else [1])] for n, b in zip(names, budgets)}
    print(f"## FT-ClipAct thresholds per budget (candidates,iterations,trials,images), {args.seeds} search seeds "
          f"each, against the reference {reference} (seed 1); search rates {args.rates}\n")
    print("\n".join(threshold_table(searched, reference)) + "\n\n`*`: the reference lies outside that budget's "
          "95 % CI over seeds.\n")
    x, y = dm.eval_tensors("test")
    finest = reference
    accs = {f"{n} seed {i + 1}": campaign(base, profile, t, x, y, args.campaign_rates, args.trials)
            for n in names[:-1] for i, t in enumerate(searched[n])}
    accs[finest] = campaign(base, profile, searched[finest][0], x, y, args.campaign_rates, args.trials)
    cells, found = [], []
    for name in (n for n in accs if n != finest):
        for rate in args.campaign_rates:
            d = np.subtract(accs[name][rate], accs[finest][rate])
            cells.append((name, rate, stats.paired_ci(d), len(found)))
            found += claims.comparison(name, finest, d, args.margin, where=f"at {rate:.0e}")
    decisions = claims.decide(found)
    print(f"## Test accuracy ({len(y)} test images, {args.trials} maps per rate, the same maps for every model): "
          f"each model minus the finest budget ({finest}), points\n")
    lines = ["| thresholds from | rate | mean difference [95 % CI] | established |", "|---|---|---|---|"]
    for name, rate, (mean, low, high), first in cells:
        better, worse, tie = (decisions[first + i].supported for i in range(3))
        shown = [w for w, on in (("better", better), ("worse", worse), (f"tie within +-{100 * args.margin:g}", tie)) if on]
        lines.append(f"| {name} | {rate:.0e} | {100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] | "
                     f"{', '.join(shown) or 'nothing'} |")
    print("\n".join(lines) + "\n\n" + claims.method_note(0.05, args.margin) + "\n")
    rows = {d.claim.name: {"mean": d.mean, "p_adjusted": d.p_adjusted, "verdict": d.verdict} for d in decisions}
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    means = {n: {f"{r:.0e}": float(np.mean(v)) for r, v in a.items()} for n, a in accs.items()}
    print(json.dumps({"thresholds": searched, "claims": rows, "mean_accuracy": means}))


if __name__ == "__main__":
    main()
