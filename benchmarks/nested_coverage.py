"""Coverage of the nested design's 95 % CI (issue 18: at least 93 % of at least 200 repetitions).

    python benchmarks/nested_coverage.py [--protections none fitact] [--rate 1e-4] [--repetitions 200]

On the quick start's model (small_cnn on digits, from the job's cached stages): a reference mean
from a very large classic campaign (--reference-maps maps, each on the whole 360-image test pool),
then --repetitions nested campaigns, each with its own campaign seed, of --trials trials of --images
images (the stopping rule off, so every repetition has the same size), and the share of their
t-intervals that contain the reference. A nested campaign estimates the same mean as the classic
one: the mean accuracy over fault maps and images. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scipy import stats as sps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign_efficiency import protected_model  # noqa: E402
from posttrain_settings import load_config  # noqa: E402

from fitact_pipeline import pipeline  # noqa: E402
from fitact_pipeline.faults import FAULT_MODELS, run_campaign  # noqa: E402


def coverage(protection: str, args) -> dict:
    cfg = load_config("quickstart", [f"protection={protection}", *args.overrides])
    device = pipeline.configure_runtime(cfg)
    model, images, labels = protected_model(cfg, device)
    injector = FAULT_MODELS[cfg.faults.model].build(model, cfg.faults)
    reference = run_campaign(model, injector, images, labels, [args.rate], args.reference_maps, 10**6, 360,
                             progress=False, maps_per_pass=8).per_rate[args.rate]
    covered, widths = 0, []
    for repetition in range(args.repetitions):
        st = run_campaign(model, injector, images, labels, [args.rate], args.trials, repetition, 360, progress=False,
                          design="nested", images_per_trial=args.images, maps_per_pass=8).per_rate[args.rate]
        covered += st["ci_low"] <= reference["mean"] <= st["ci_high"]
        widths.append(st["ci_halfwidth"])
    share = covered / args.repetitions
    low, high = sps.binomtest(covered, args.repetitions).proportion_ci(0.95)
    print(f"{protection} at {args.rate:g}: reference mean {100 * reference['mean']:.2f} % (+- "
          f"{100 * reference['ci_halfwidth']:.2f}, {args.reference_maps} maps x 360 images); nested "
          f"{args.trials} x {args.images}: covered {covered}/{args.repetitions} = {100 * share:.1f} % "
          f"[{100 * low:.1f}, {100 * high:.1f}], mean half-width {100 * sum(widths) / len(widths):.2f} points",
          flush=True)
    return {"reference": reference["mean"], "reference_halfwidth": reference["ci_halfwidth"],
            "covered": covered, "repetitions": args.repetitions, "coverage": share, "coverage_ci95": [low, high]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protections", nargs="+", default=["none", "fitact"])
    ap.add_argument("--rate", type=float, default=1e-4)
    ap.add_argument("--repetitions", type=int, default=200)
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--reference-maps", type=int, default=4000)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. cache_dir=/work/main/.cache")
    args = ap.parse_args()
    print(json.dumps({p: coverage(p, args) for p in args.protections}))


if __name__ == "__main__":
    main()
