"""Cost of one fault-injection trial next to one evaluation pass, and next to a naive injector.

Setting (issue 3, "Must show"): full-width VGG16 for 32x32 inputs with random weights, BatchNorm
folded, FitAct neuron-wise bounds (one bound per C*H*W activation element), Q15.16, fault space
weights + biases + bounds, BER 3e-5.

- inject_restore_ms: median wall time of ``with injector.inject(rate, seed, trial): pass`` over
  many trials; it includes drawing the fault map, flipping and restoring.
- eval_ms: median time of one clean evaluation pass over 1,000 images, batch 250.
- naive_ms: the usual toolbox approach on the same fault map: copy.deepcopy of the model, then a
  Python loop flipping one bit at a time (encode one value, flip, decode, write back). Its result
  is checked bit for bit against the injector's, so both really do the same work.

The last line is JSON: flips, inject_restore_ms, eval_ms, overhead_ratio, naive_ms, speedup_vs_naive.
Run: /work/venv/bin/python benchmarks/fault_injection.py [--repeats 50] [--eval-repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

# The project is run from its checkout, not installed: make `fitact_pipeline` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fitact_pipeline.evaluate import evaluate_accuracy  # noqa: E402
from fitact_pipeline.faults import FaultInjector  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402


def protected_vgg16(images: torch.Tensor) -> nn.Module:
    from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model

    model = build_model("vgg16", num_classes=10).eval()
    fold_batchnorm(model)
    return protect_model(model, "fitact", "neuron", profile_activations(model, images)).eval()


def naive_trial(model: nn.Module, records, word_bits: int = 32, frac_bits: int = 16) -> nn.Module:
    """Reference: deep copy, then flip one bit at a time in Python (what the issue compares to)."""
    faulty = copy.deepcopy(model)
    params = dict(faulty.named_parameters())
    scale, mask, half = 2 ** frac_bits, (1 << word_bits) - 1, 1 << (word_bits - 1)
    with torch.no_grad():
        for name, index, bit in records:
            flat = params[name].view(-1)
            word = int(round(flat[index].item() * scale)) & mask
            word ^= 1 << bit
            signed = word - (1 << word_bits) if word >= half else word
            flat[index] = signed / scale
    return faulty


TIMES: dict[str, list[float]] = {}


def median_ms(fn, repeats: int, key: str = "") -> float:
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fn(r)
        times.append((time.perf_counter() - t0) * 1e3)
    TIMES[key] = times
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=3e-5)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=50, help="inject+restore trials timed")
    ap.add_argument("--eval-repeats", type=int, default=3)
    ap.add_argument("--naive-repeats", type=int, default=3)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    images = torch.randn(args.images, 3, 32, 32, generator=gen)
    labels = torch.randint(0, 10, (args.images,), generator=gen)
    model = protected_vgg16(images[:250])
    injector = FaultInjector(model, fmt="fixed", word_bits=32, frac_bits=16,
                             targets=("weight", "bias", "bound"))
    space = injector.fault_space
    print(f"fault space: {space['num_tensors']} tensors, {space['total_elements']:,} elements, "
          f"{space['total_bits']:,} bits; threads={torch.get_num_threads()}")
    clean = {k: v.detach().clone().view(torch.int32) for k, v in model.state_dict().items()}

    evaluate_accuracy(model, images[:args.batch_size], labels[:args.batch_size], args.batch_size)  # warm-up
    eval_ms = median_ms(lambda r: evaluate_accuracy(model, images, labels, args.batch_size), args.eval_repeats)

    def one_trial(r):
        with injector.inject(args.rate, seed=0, trial=r):
            pass

    for r in range(3):  # warm-up
        one_trial(10_000 + r)
    inject_ms = median_ms(one_trial, args.repeats, "inject")
    sample_ms = median_ms(lambda r: injector.sample(args.rate, seed=0, trial=r), args.repeats)
    flips = [len(injector.sample(args.rate, 0, r)) for r in range(args.repeats)]

    fmap = injector.sample(args.rate, seed=0, trial=0)
    records = fmap.records

    def apply_only(_r):
        with injector.apply(fmap):
            pass

    apply_ms = median_ms(apply_only, args.repeats)
    naive_ms = median_ms(lambda r: naive_trial(model, records), args.naive_repeats)

    # Cross-check: the naive copy and the injector produce the same faulty model, bit for bit.
    reference = naive_trial(model, records).state_dict()
    with injector.apply(fmap):
        for k, v in model.state_dict().items():
            assert torch.equal(v.view(torch.int32), reference[k].view(torch.int32)), k
    for k, v in model.state_dict().items():
        assert torch.equal(v.view(torch.int32), clean[k]), f"{k} not restored"

    print(f"flips per trial: median {statistics.median(flips)} (expected {space['total_bits'] * args.rate:.0f}); "
          f"sample-only {sample_ms:.2f} ms, apply+restore of a given map {apply_ms:.2f} ms")
    print(f"inject+restore ms: min {min(TIMES['inject']):.2f}, median {inject_ms:.2f}, "
          f"max {max(TIMES['inject']):.2f} over {args.repeats} trials (a busy shared CPU preempts some)")
    print("naive result matches the injector bit for bit; model restored bit for bit")
    result = {
        "flips": len(fmap),
        "inject_restore_ms": round(inject_ms, 3),
        "eval_ms": round(eval_ms, 1),
        "overhead_ratio": round(inject_ms / eval_ms, 6),
        "naive_ms": round(naive_ms, 1),
        "speedup_vs_naive": round(naive_ms / inject_ms, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
