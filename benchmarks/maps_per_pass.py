"""Trials per second with K fault maps evaluated in one vmapped pass against one map per pass (issue
18: target at least 3x on small_cnn, on CPU).

    python benchmarks/maps_per_pass.py [--models small_cnn vgg16_w025] [--k 1 4 8 16] [--rounds 5]

Setting: each model with BatchNorm folded and neuron-wise FitAct bounds (random weights: the cost
does not depend on them), Q15.16 memory faults at 1e-5, the nested design with ``--images`` images
per trial (default 20; the quick start's pilot picks 5 to 57), 256 trials per campaign on a pool of
500 images. Trials per second leave out the campaign's set-up (its clean pass over the pool, the
same for every K), timed in the same round. Each round runs one campaign
per K in a seeded random order; the figure per K is the median over rounds of trials per second,
and the speed-up the median of the per-round ratios to K = 1.

Next to it, the most that batching can save in the forward pass itself on this machine: K plain
passes of n images against one plain pass of K n images of the same model ("pass ceiling", median
of the same rounds). A multi-map pass does at least the second's arithmetic, so where the ceiling is
low, only the per-trial work outside the pass (drawing, injecting, image subsets) is left to save.
The last line is JSON: {model: {K: {"trials_per_s", "speedup", "pass_ceiling"}}}.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline.evaluate import correct_mask  # noqa: E402
from fitact_pipeline.faults import FaultInjector, run_campaign  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model  # noqa: E402

POOL = 500  # evaluation images
SHAPES = {"small_cnn": (1, 8, 1.0), "vgg16_w025": (3, 32, 0.25), "vgg16": (3, 32, 1.0)}


def setup(option: str):
    channels, size, width = SHAPES[option]
    torch.manual_seed(0)
    model = build_model(option.split("_w")[0], 10, channels, width).eval()
    fold_batchnorm(model)
    images = torch.randn(POOL, channels, size, size)
    labels = torch.randint(0, 10, (POOL,))
    protected = protect_model(model, "fitact", profile=profile_activations(model, images[:200]), fused=True)
    return protected, FaultInjector(protected), images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small_cnn", "vgg16_w025"], choices=sorted(SHAPES))
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--trials", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--images", type=int, default=20, help="images per trial (n)")
    args = ap.parse_args()
    out = {}
    for option in args.models:
        model, injector, images, labels = setup(option)

        def campaign(k: int, trials: int) -> float:
            start = time.perf_counter()
            run_campaign(model, injector, images, labels, [1e-5], trials, 0, 250, progress=False,
                         design="nested", images_per_trial=args.images, maps_per_pass=k)
            return time.perf_counter() - start

        for k in args.k:  # warm-up (kernels, allocator)
            campaign(k, args.trials)
            pass_ceiling(model, images, k, args.images)
        speed = {k: [] for k in args.k}
        ceiling = {k: [] for k in args.k}
        for r in range(args.rounds):
            for k in random.Random(r).sample(args.k, len(args.k)):
                start = time.perf_counter()
                correct_mask(model, images, labels, 250)  # what a campaign does before its trials
                setup_s = time.perf_counter() - start
                speed[k].append(args.trials / (campaign(k, args.trials) - setup_s))
                ceiling[k].append(pass_ceiling(model, images, k, args.images))
        base = args.k[0]
        out[option] = {k: {"trials_per_s": round(statistics.median(v), 1),
                           "speedup": round(statistics.median(a / b for a, b in zip(v, speed[base])), 2),
                           "pass_ceiling": round(statistics.median(ceiling[k]), 2)}
                       for k, v in speed.items()}
        print(option, f"n={args.images}", ", ".join(f"K={k}: {s['trials_per_s']} trials/s ({s['speedup']}x; "
                                                   f"pass ceiling {s['pass_ceiling']}x)" for k, s in out[option].items()),
              flush=True)
    print(json.dumps(out))


@torch.no_grad()
def pass_ceiling(model, images: torch.Tensor, k: int, n: int, repeats: int = 5) -> float:
    """Time of K plain passes of n images over time of one plain pass of K n images (best of
    ``repeats`` each): what batching the maps' images alone can save on this machine."""
    many = images[torch.arange(k * n) % len(images)]

    def best(batch: int, calls: int) -> float:
        x = many[:batch]
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                model(x)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(n, k) / best(k * n, 1)


if __name__ == "__main__":
    main()
