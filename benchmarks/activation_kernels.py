"""The bounded-activation kernels alone, on every activation map of a model (CPU).

    python benchmarks/activation_kernels.py                     # resnet50, vgg16, alexnet
    python benchmarks/activation_kernels.py --models resnet50 --repeats 30

For each ReLU site of the full-width model (batch 128, 32x32) it builds a map of that site's shape
and times, interleaved on the same map: ``relu_`` (what the ReLU model runs), the torch.compile'd
kernel with a neuron-wise bound (the CPU fallback, and the CUDA path), and the C++ op of
fitact_pipeline/protect/cpu_kernel.py with a neuron-, channel- and layer-wise bound, all in place. Each entry
is the median of ``--repeats`` runs; the total sums over sites (a site shape used k times counts k
times). The map is refreshed from a saved copy before every timed call, so it starts in cache for
every kernel alike. benchmarks/overhead.py measures what this means for a whole pass.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitact_pipeline.protect import cpu_kernel  # noqa: E402
from fitact_pipeline.protect.kernels import compiled  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402

KERNELS = ("relu_", "compiled/neuron", "op/neuron", "op/channel", "op/layer")


def site_shapes(name: str, batch: int) -> collections.Counter:
    model = build_model(name, num_classes=10, in_channels=3, width=1.0).eval()
    shapes = []
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.register_forward_hook(lambda mod, inp, out: shapes.append(tuple(out.shape[1:])))
    with torch.inference_mode():
        model(torch.randn(2, 3, 32, 32))
    return collections.Counter((batch,) + s for s in shapes)


def time_site(shape, repeats: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    saved = torch.randn(shape, generator=gen)
    neuron = torch.rand(shape[1:], generator=gen) * 2
    channel = neuron.amax(dim=tuple(range(1, neuron.dim())), keepdim=True) if neuron.dim() > 1 else neuron
    layer = neuron.amax()
    fused = compiled("clip", inplace=True)
    x = saved.clone()
    run = {"relu_": lambda: torch.relu_(x), "compiled/neuron": lambda: fused(x, neuron),
           "op/neuron": lambda: cpu_kernel.bounded_relu(x, neuron, form="clip", inplace=True),
           "op/channel": lambda: cpu_kernel.bounded_relu(x, channel, form="clip", inplace=True),
           "op/layer": lambda: cpu_kernel.bounded_relu(x, layer, form="clip", inplace=True)}
    times = {k: [] for k in KERNELS}
    for r in range(repeats + 2):  # two untimed rounds: compile, first touch
        for k in KERNELS:
            x.copy_(saved)
            t0 = time.perf_counter()
            run[k]()
            if r >= 2:
                times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,vgg16,alexnet")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    if not cpu_kernel.load():
        raise SystemExit("the C++ op could not be built (see the log above); nothing to compare")
    totals = {}
    with torch.inference_mode():
        for name in args.models.split(","):
            sites = site_shapes(name, args.batch)
            total = dict.fromkeys(KERNELS, 0.0)
            print(f"\n{name}: {sum(sites.values())} sites, batch {args.batch}, {torch.get_num_threads()} threads, "
                  f"ms per call (median of {args.repeats})")
            print(f"{'shape':24s} {'n':>3s} " + " ".join(f"{k:>16s}" for k in KERNELS))
            for shape, count in sites.items():
                ms = time_site(shape, args.repeats)
                for k in KERNELS:
                    total[k] += count * ms[k]
                print(f"{str(shape):24s} {count:3d} " + " ".join(f"{ms[k]:16.3f}" for k in KERNELS), flush=True)
            print(f"{'total (all sites)':28s} " + " ".join(f"{total[k]:16.2f}" for k in KERNELS))
            totals[name] = {k: round(v, 2) for k, v in total.items()}
    print(json.dumps({"ms_per_pass_all_sites": totals, "threads": torch.get_num_threads(), "batch": args.batch}))


if __name__ == "__main__":
    main()
