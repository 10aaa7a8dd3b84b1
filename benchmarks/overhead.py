"""Inference overhead of the protections (paper Table I): runtime and memory vs the ReLU model.

    python benchmarks/overhead.py                       # vgg16, resnet50, alexnet; 32x32, batch 128
    python benchmarks/overhead.py --models vgg16 --repeats 3 --no-fused
    python benchmarks/overhead.py --models resnet50 --repeats 15 --variants fitact/neuron/hard+fused
    python benchmarks/overhead.py --models vgg16 --activations relu,relu6,gelu,silu --pairs 10
    python benchmarks/overhead.py --models torchvision:mobilenet_v2,torchvision:efficientnet_b0 --size 224 --batch 32

``--activations`` swaps every ReLU of the model for another activation kind (activations.py)
and measures the bounded forms of that kind against the unprotected model with the same
activation, side by side (the fused kernels are ReLU-only: other kinds run their eager forms).
``torchvision:<arch>`` measures a torchvision classifier with its own activations (random weights).

All variants of one model share the same (BatchNorm-folded, full-width, untrained) weights; only
the activation modules differ. Runtime is the median of ``--repeats`` passes, measured interleaved
(pass r of every variant before pass r+1 of any, in a seeded random order per round), so machine
load drifts hit every variant alike and no variant always runs after the same one.
Memory is the bytes of parameters and buffers (what a deployed model stores); on CUDA also the peak
allocated memory of a pass. Variants with ``+fused`` run the hard bound check through one
torch.compile'd kernel (fitact_pipeline/protect/kernels.py); the ReLU reference and the convolutions stay eager.

The last line is JSON: fitact_runtime_overhead / fitact_memory_overhead per model for neuron-wise
hard FitReLU in its inference form, the fused kernel (the eager form with --no-fused; the
``fitact_form`` field says which), and the eager form's runtime overhead under *_eager. The runtime
figure is the median, over ``--pairs`` back-to-back pairs of passes (ReLU model, FitAct model, in
ABBA order), of the per-pair ratio: the table's ratio of medians comes from passes up to a round of
all variants apart (~35 s on ResNet50), and a drift within that span moved it by up to 10 points.
The pairs come from fitact_pipeline.overhead.paired_ratios; ``fitact_runtime_overhead_ci95`` is
the seeded percentile-bootstrap 95 % interval of that median (fitact_pipeline.stats). On CPU the benchmark runs under
``--allocator heap`` by default (see use_heap_allocator).
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch import nn  # noqa: E402

from fitact_pipeline.models import build_model, model_from_config  # noqa: E402
from fitact_pipeline.overhead import compare_inference, paired_ratios  # noqa: E402
from fitact_pipeline.stats import bootstrap_median_ci  # noqa: E402
from fitact_pipeline.protect import ACTIVATIONS, fold_batchnorm, profile_ranges, protect_model  # noqa: E402

# (label, protection, granularity, hard, fused)
VARIANTS = [
    ("unprotected", "none", "layer", True, False),
    ("ranger/layer", "ranger", "layer", True, False),
    ("clipact/layer", "clipact", "layer", True, False),
    ("fitact/neuron/hard", "fitact", "neuron", True, False),
    ("fitact/channel/hard", "fitact", "channel", True, False),
    ("fitact/layer/hard", "fitact", "layer", True, False),
    ("fitact/neuron/smooth", "fitact", "neuron", False, False),
    ("fitact/channel/smooth", "fitact", "channel", False, False),
    ("fitact/layer/smooth", "fitact", "layer", False, False),
]
HEADLINE = "fitact/neuron/hard+fused"  # the figure: neuron-wise FitReLU-Naive as deployed
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
FUSED = [
    ("clipact/layer+fused", "clipact", "layer", True, True),
    ("fitact/neuron/hard+fused", "fitact", "neuron", True, True),
    ("fitact/channel/hard+fused", "fitact", "channel", True, True),
]


def use_heap_allocator() -> bool:
    """glibc only: serve every allocation from the heap and keep freed memory (no mmap/munmap per
    tensor). With the system default, each activation map above 32 MB is a fresh mmap whose pages
    fault in on first write: on this machine that was ~40 % of a ResNet50 pass (sys time), and its
    run-to-run swings (+-10 %) drowned the activation cost being measured. Both sides of every
    ratio run under the same allocator."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def swap_activations(model: nn.Module, kind: str) -> nn.Module:
    """Every nn.ReLU of ``model`` replaced by a module of ``kind`` (in place where it has the flag,
    as the ReLUs were)."""
    cls = ACTIVATIONS[kind].modules[0]
    for name, m in list(model.named_modules()):
        if type(m) is nn.ReLU and kind != "relu":
            new = cls(inplace=True) if "inplace" in cls.__init__.__code__.co_varnames else cls()
            model.set_submodule(name, new)
    return model


def base_model(name: str, kind: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("torchvision:"):
        cfg = {"name": "torchvision", "arch": name.partition(":")[2], "weights": None, "kwargs": {}}
        return model_from_config(cfg, num_classes=1000, seed=0).eval()
    return swap_activations(build_model(name, num_classes=10, in_channels=3, width=1.0), kind).eval()


def bench_model(name: str, args, device, kind: str = "relu") -> dict:
    base = base_model(name, kind)
    fold_batchnorm(base)  # what a deployed model runs and stores
    base.to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    profile, lower = profile_ranges(base, x[:16])  # bound values do not affect speed, only shapes do
    variants = VARIANTS + (FUSED if args.fused else [])
    if args.variants:
        keep = {"unprotected", *args.variants.split(",")}
        unknown = keep - {v[0] for v in variants}
        if unknown:
            raise SystemExit(f"unknown variant(s) {sorted(unknown)}; choose from: {', '.join(v[0] for v in variants)}")
        variants = [v for v in variants if v[0] in keep]
    models = {}
    for label, prot, gran, hard, fused in variants:
        options = {"fused": fused, **({"hard": hard} if prot == "fitact" else {})}  # only FitReLU has two forms
        m = base if prot == "none" else protect_model(copy.deepcopy(base), prot, gran, profile, lower=lower, **options)
        models[label] = m.eval().to(device)
    # warm-up compiles the fallback kernel / builds the C++ op once; interleaved rounds in a seeded
    # random order (fitact_pipeline.overhead.compare_inference, as the in-job Table I)
    measured = compare_inference(models, x, repeats=args.repeats, warmup=1)
    ref = measured["unprotected"]
    rows = {label: {"time_s": r["ms"] / 1000, "runtime_overhead": r["ms"] / ref["ms"] - 1, "bytes": r["bytes"],
                    "memory_overhead": r["bytes"] / ref["bytes"] - 1, "peak_bytes": r["peak_cuda_bytes"]}
            for label, r in measured.items()}
    headline = HEADLINE if HEADLINE in models else "fitact/neuron/hard"
    if headline in models and args.pairs > 0:
        rows[headline]["paired"] = paired_ratios(models["unprotected"], models[headline], x, args.pairs)
    return rows


def print_rows(rows: dict, device) -> None:
    print(f"{'variant':28s} {'time ms':>9s} {'runtime +%':>10s} {'MB stored':>10s} {'memory +%':>10s}"
          + (f" {'peak MB':>9s}" if device.type == "cuda" else ""))
    for label, r in rows.items():
        line = (f"{label:28s} {r['time_s'] * 1e3:9.1f} {100 * r['runtime_overhead']:+10.2f} "
                f"{r['bytes'] / 2**20:10.2f} {100 * r['memory_overhead']:+10.3f}")
        if device.type == "cuda":
            line += f" {r['peak_bytes'] / 2**20:9.1f}"
        print(line, flush=True)


def summarise(rows: dict, key: str, summary: dict) -> None:
    """The JSON line's figures of one model (and activation): the FitAct headline, paired when measured."""
    inference = rows.get(HEADLINE, rows.get("fitact/neuron/hard"))
    if inference is not None:
        figure = inference["runtime_overhead"]
        if "paired" in inference:
            pairs = sorted(inference["paired"])
            figure, low, high = bootstrap_median_ci(pairs)
            summary["fitact_runtime_overhead_ci95"][key] = [round(low, 4), round(high, 4)]
            print(f"paired ({len(pairs)} back-to-back pairs): FitAct/ReLU - 1 median {100 * figure:+.2f} % "
                  f"[95 % CI {100 * low:+.2f}, {100 * high:+.2f}], range {100 * pairs[0]:+.2f} .. "
                  f"{100 * pairs[-1]:+.2f} %", flush=True)
        summary["fitact_runtime_overhead"][key] = round(figure, 4)
        summary["fitact_memory_overhead"][key] = round(inference["memory_overhead"], 5)
    if "fitact/neuron/hard" in rows:
        summary["fitact_runtime_overhead_eager"][key] = round(rows["fitact/neuron/hard"]["runtime_overhead"], 4)
    summary["memory_overhead_by_granularity"][key] = {
        g: round(rows[f"fitact/{g}/hard"]["memory_overhead"], 5)
        for g in ("neuron", "channel", "layer") if f"fitact/{g}/hard" in rows}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="vgg16,resnet50,alexnet")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32, help="image size (224 for torchvision models at ImageNet size)")
    p.add_argument("--activations", default="relu",
                   help="comma-separated activation kinds swapped in for ReLU (registry models only)")
    p.add_argument("--devices", default="cpu,cuda", help="measured where available")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-fused", dest="fused", action="store_false", help="skip the torch.compile'd variants")
    p.add_argument("--variants", default=None,
                   help="comma-separated variant labels to measure (unprotected always), e.g. fitact/neuron/hard+fused")
    p.add_argument("--pairs", type=int, default=30,
                   help="back-to-back ReLU/FitAct pass pairs behind the JSON runtime figure (0: table only)")
    p.add_argument("--allocator", choices=("heap", "system"), default="heap",
                   help="heap: no mmap per tensor (glibc; see use_heap_allocator); system: the default")
    args = p.parse_args(argv)
    allocator = "heap" if args.allocator == "heap" and use_heap_allocator() else "system"
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device(d) for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    form = "fused kernel" if args.fused else "eager"
    summary = {"batch": args.batch, "repeats": args.repeats,
               "fitact_form": f"neuron-wise hard FitReLU (FitReLU-Naive), {form}",
               "threads": torch.get_num_threads(), "allocator": allocator,
               "runtime_figure": f"median over {args.pairs} back-to-back pass pairs of FitAct/ReLU - 1"
               if args.pairs > 0 else f"ratio of medians of {args.repeats} interleaved passes - 1",
               "fitact_runtime_overhead": {}, "fitact_runtime_overhead_ci95": {}, "fitact_memory_overhead": {},
               "fitact_runtime_overhead_eager": {}, "memory_overhead_by_granularity": {}, "by_activation": {}}
    for device in devices:
        for name in args.models.split(","):
            kinds = ["relu"] if name.startswith("torchvision:") else args.activations.split(",")
            for kind in kinds:
                rows = bench_model(name, args, device, kind)
                key = (name if kind == "relu" else f"{name}/{kind}") + ("" if device.type == "cpu" else f"@{device.type}")
                print(f"\n{key} on {device} ({args.size}x{args.size}, batch {args.batch}, median of {args.repeats}, "
                      f"{torch.get_num_threads()} threads, {allocator} allocator)")
                print_rows(rows, device)
                summarise(rows, key, summary)
                summary["by_activation"][key] = {label: round(r["runtime_overhead"], 4) for label, r in rows.items()}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
