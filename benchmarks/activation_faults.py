"""Cost of transient activation faults next to a clean evaluation pass (issue 17: target at most
+5 % at BER 1e-6).

Setting: VGG16 (BatchNorm folded, FitAct neuron-wise bounds, random weights: the cost does not depend
on them) at the widths given, 1,000 images of 32x32 in batches of 250; faults at every convolution
and linear output, float32 datapath. Each round evaluates the images once clean and once inside a new
activation-fault trial, in a seeded random order (a drift of the machine hits both alike); the figure
is the median over rounds of the per-round time ratio, with a bootstrap 95 % interval.

    python benchmarks/activation_faults.py [--widths 0.25 1.0] [--rate 1e-6] [--rounds 15]

The last line is JSON: {width: {"clean_ms", "faulty_ms", "extra", "extra_ci95", "flips_per_pass"}}.
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
from fitact_pipeline.evaluate import evaluate_accuracy  # noqa: E402
from fitact_pipeline.faults import ActivationInjector  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model  # noqa: E402
from fitact_pipeline.stats import bootstrap_median_ci  # noqa: E402


def protected_vgg16(width: float, images: torch.Tensor) -> torch.nn.Module:
    model = build_model("vgg16", 10, 3, width).eval()
    fold_batchnorm(model)
    return protect_model(model, "fitact", profile=profile_activations(model, images), fused=True).eval()


def measure(width: float, args) -> dict:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images = torch.randn(args.images, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    model = protected_vgg16(width, images[:250])
    injector = ActivationInjector(model)

    def clean(_trial):
        evaluate_accuracy(model, images, labels, args.batch_size)

    flips = []

    def faulty(trial):
        with injector.inject(args.rate, seed=0, trial=trial) as t:
            evaluate_accuracy(model, images, labels, args.batch_size, injector.begin_batch)
        flips.append(t.num_flips)

    for warm in range(2):
        clean(warm), faulty(10_000 + warm)
    ratios, times = [], {"clean": [], "faulty": []}
    for r in range(args.rounds):
        timed = {}
        for name in random.Random(r).sample(["clean", "faulty"], 2):
            start = time.perf_counter()
            (clean if name == "clean" else faulty)(r)
            timed[name] = time.perf_counter() - start
            times[name].append(timed[name])
        ratios.append(timed["faulty"] / timed["clean"] - 1.0)
    extra, low, high = bootstrap_median_ci(ratios)
    return {"clean_ms": round(1000 * statistics.median(times["clean"]), 1),
            "faulty_ms": round(1000 * statistics.median(times["faulty"]), 1),
            "extra": round(extra, 4), "extra_ci95": [round(low, 4), round(high, 4)],
            "flips_per_pass": statistics.median(flips)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    ap.add_argument("--rate", type=float, default=1e-6)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    result = {}
    for width in args.widths:
        result[str(width)] = measure(width, args)
        r = result[str(width)]
        print(f"VGG16 width {width}: clean {r['clean_ms']} ms, with activation faults at {args.rate:g} "
              f"{r['faulty_ms']} ms per {args.images} images ({r['flips_per_pass']:.0f} flips per pass): "
              f"{100 * r['extra']:+.2f} % [{100 * r['extra_ci95'][0]:+.2f}, {100 * r['extra_ci95'][1]:+.2f}]")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
