"""Trials per second with K fault maps evaluated in one vmapped pass against one map per pass (issue
18: target at least 3x on small_cnn, on CPU).

    python benchmarks/maps_per_pass.py [--models small_cnn vgg16_w025] [--k 1 4 8 16] [--rounds 5]

Setting: each model with BatchNorm folded and neuron-wise FitAct bounds (random weights: the cost
does not depend on them), Q15.16 memory faults at 1e-5, the nested design with 20 images per trial
(the regime where a map's fixed cost dominates), 64 trials per campaign. Each round runs one
campaign per K in a seeded random order; the figure per K is the median over rounds of trials per
second, and the speed-up the median of the per-round ratios to K = 1.
The last line is JSON: {model: {K: {"trials_per_s", "speedup"}}}.
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
from fitact_pipeline.faults import FaultInjector, run_campaign  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model  # noqa: E402

SHAPES = {"small_cnn": (1, 8, 1.0), "vgg16_w025": (3, 32, 0.25), "vgg16": (3, 32, 1.0)}


def setup(option: str):
    channels, size, width = SHAPES[option]
    torch.manual_seed(0)
    model = build_model(option.split("_w")[0], 10, channels, width).eval()
    fold_batchnorm(model)
    images = torch.randn(500, channels, size, size)
    labels = torch.randint(0, 10, (500,))
    protected = protect_model(model, "fitact", profile=profile_activations(model, images[:200]), fused=True)
    return protected, FaultInjector(protected), images, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["small_cnn", "vgg16_w025"], choices=sorted(SHAPES))
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    out = {}
    for option in args.models:
        model, injector, images, labels = setup(option)

        def campaign(k: int) -> float:
            start = time.perf_counter()
            run_campaign(model, injector, images, labels, [1e-5], args.trials, 0, 250, progress=False,
                         design="nested", images_per_trial=20, maps_per_pass=k)
            return args.trials / (time.perf_counter() - start)

        for k in args.k:  # warm-up (kernels, allocator)
            campaign(k)
        speed = {k: [] for k in args.k}
        for r in range(args.rounds):
            for k in random.Random(r).sample(args.k, len(args.k)):
                speed[k].append(campaign(k))
        base = args.k[0]
        out[option] = {k: {"trials_per_s": round(statistics.median(v), 1),
                           "speedup": round(statistics.median(a / b for a, b in zip(v, speed[base])), 2)}
                       for k, v in speed.items()}
        print(option, ", ".join(f"K={k}: {s['trials_per_s']} trials/s ({s['speedup']}x)" for k, s in out[option].items()),
              flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
