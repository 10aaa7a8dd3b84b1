"""Is the FT-ClipAct search budget large enough? Thresholds of a small budget (repro_cpu's: 4 candidates
x 2 iterations x 2 maps x 128 images) against a finer one, on the quick start's model.

    python benchmarks/clipact_search_stability.py                      # small_cnn on digits, ~2-4 min
    python benchmarks/clipact_search_stability.py --seeds 5 --budget 5,3,4,300

Trains small_cnn on digits (the quick start's settings), folds BatchNorm, profiles, and runs the
search (DESIGN.md §2.4) at each budget: the small one with --seeds different search seeds (other
fault maps; the images are all drawn with the seed too), so that its own noise shows, and each
further --budget once. For every site it prints the thresholds, their mean and 95 % t-interval over
the seeds, and each finer threshold's distance from that mean. Then every searched model runs the
same fault campaign on the test split (the same maps for all: paired), and the table prints each
small-budget model minus the finest one per rate, with the paired 95 % CI and the equivalence test
of fitact_pipeline/claims.py (a tie within --margin points, Holm across the table): "stable" means
the small budget's thresholds give the finest budget's accuracy within the margin.
The last line is JSON with the thresholds and the differences.
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


def threshold_table(small: list[dict], finer: dict[str, dict]) -> list[str]:
    names = list(finer)
    lines = ["| site | small budget, per seed | mean [95 % CI] over seeds | " +
             " | ".join(f"{n} (- mean)" for n in names) + " |", "|---" * (3 + len(names)) + "|"]
    for site in small[0]:
        values = [s[site] for s in small]
        mean, low, high = stats.mean_ci(values)
        cells = [f"{finer[n][site]:.3f} ({finer[n][site] - mean:+.3f}{'' if low <= finer[n][site] <= high else ' *'})"
                 for n in names]
        lines.append(f"| {site} | {', '.join(f'{v:.3f}' for v in values)} | {mean:.3f} [{low:.3f}, {high:.3f}] | "
                     + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="search seeds of the small budget")
    ap.add_argument("--small", type=budget, default=REPRO, help="candidates,iterations,trials,images")
    ap.add_argument("--budget", type=budget, action="append", help="a finer budget (repeatable); "
                    "default 5,3,4,300 and 8,3,8,300 (300 = every digits validation image)")
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
    finer_budgets = args.budget or [(5, 3, 4, 300), (8, 3, 8, 300)]
    started = time.perf_counter()
    dm, base = trained_model(0)
    profile = profile_activations(base, dm.profile_dataloader(1137), 1137)
    small = [search(base, profile, dm, args.small, args.rates, seed) for seed in range(1, args.seeds + 1)]
    finer = {",".join(map(str, b)): search(base, profile, dm, b, args.rates, 1) for b in finer_budgets}
    print(f"## FT-ClipAct thresholds: small budget {','.join(map(str, args.small))} (candidates,iterations,"
          f"trials,images) over {args.seeds} search seeds vs finer budgets (seed 1); search rates {args.rates}\n")
    print("\n".join(threshold_table(small, finer)) + "\n\n`*`: outside the small budget's 95 % CI over seeds.\n")
    x, y = dm.eval_tensors("test")
    finest = list(finer)[-1]
    accs = {f"small seed {i + 1}": campaign(base, profile, s, x, y, args.campaign_rates, args.trials)
            for i, s in enumerate(small)}
    accs.update({n: campaign(base, profile, t, x, y, args.campaign_rates, args.trials) for n, t in finer.items()})
    found = [c for name in accs if name != finest for rate in args.campaign_rates
             for c in claims.comparison(name, finest, np.subtract(accs[name][rate], accs[finest][rate]),
                                        args.margin, where=f"at {rate:.0e}")]
    decisions = claims.decide(found)
    print(f"## Test accuracy (%, {len(y)} test images, {args.trials} maps per rate, the same maps for every model)"
          f" minus the finest budget ({finest})\n")
    print(claims.method_note(0.05, args.margin) + "\n")
    print("\n".join(claims.table([d for d in decisions if " ties " in d.claim.name])) + "\n")
    rows = {d.claim.name: {"mean": d.mean, "p_adjusted": d.p_adjusted, "verdict": d.verdict} for d in decisions}
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    means = {n: {f"{r:.0e}": float(np.mean(v)) for r, v in a.items()} for n, a in accs.items()}
    print(json.dumps({"small": small, "finer": finer, "claims": rows, "mean_accuracy": means}))


if __name__ == "__main__":
    main()
