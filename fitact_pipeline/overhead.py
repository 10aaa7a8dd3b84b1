"""Inference runtime and memory of a protected model against its ReLU original (paper Table I).

Runtimes are medians of passes interleaved side by side (one pass of every model per round, in a
seeded random order per round) in one process, so a noisy machine slows all alike; the ratio is
what is reported.
"""
from __future__ import annotations

import random
import statistics
import time

import torch
from torch import nn

from .checks import check_keys, expect_bool, expect_int


def check_overhead_config(cfg) -> None:
    """A one-line ConfigError for a bad ``overhead`` value, before any work."""
    check_keys(cfg, "overhead", ("enabled", "batch_size", "repeats"))
    expect_bool(cfg.get("enabled", False), "overhead.enabled")
    expect_int(cfg.get("batch_size", 1), "overhead.batch_size", 1)
    expect_int(cfg.get("repeats", 1), "overhead.repeats", 1)


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer: what the deployed model stores."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def timed_pass(model: nn.Module, batch: torch.Tensor) -> float:
    if batch.is_cuda:
        torch.cuda.synchronize(batch.device)
    start = time.perf_counter()
    model(batch)
    if batch.is_cuda:
        torch.cuda.synchronize(batch.device)
    return time.perf_counter() - start


def _peak_cuda_bytes(model: nn.Module, batch: torch.Tensor) -> int | None:
    """Peak memory a pass allocates on top of what is resident (every compared model is): the
    activations and workspaces of this model's pass."""
    if not batch.is_cuda:
        return None
    torch.cuda.synchronize(batch.device)
    resident = torch.cuda.memory_allocated(batch.device)
    torch.cuda.reset_peak_memory_stats(batch.device)
    model(batch)
    torch.cuda.synchronize(batch.device)
    return int(torch.cuda.max_memory_allocated(batch.device) - resident)


@torch.inference_mode()
def compare_inference(models: dict[str, nn.Module], batch: torch.Tensor, repeats: int = 10,
                      warmup: int = 2) -> dict[str, dict[str, float | int | None]]:
    """Median inference time (ms) and memory of each model on the same batch, interleaved. Each
    round runs the models in a seeded random order: in a fixed order the pass right after a model
    that allocates large temporaries (the smooth FitReLU) ran 7-10 % slower, and always hit the
    same model (docs/protections.md, "Overheads")."""
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(batch)
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(repeats):
        for name in random.Random(r).sample(list(models), len(models)):
            times[name].append(timed_pass(models[name], batch))
    return {name: {"ms": 1000 * statistics.median(times[name]), "bytes": model_bytes(model),
                   "peak_cuda_bytes": _peak_cuda_bytes(model, batch)}
            for name, model in models.items()}


@torch.inference_mode()
def paired_ratios(reference: nn.Module, protected: nn.Module, batch: torch.Tensor, pairs: int) -> list[float]:
    """Per-pair time ratios protected/reference - 1, the two passes of a pair back to back, in ABBA
    order (a drift, or an advantage of going first, cancels over two pairs). Their median is
    steadier than a ratio of medians whose passes lie far apart on a busy machine."""
    out = []
    for i in range(pairs):
        if i % 2 == 0:
            ref = timed_pass(reference, batch)
            prot = timed_pass(protected, batch)
        else:
            prot = timed_pass(protected, batch)
            ref = timed_pass(reference, batch)
        out.append(prot / ref - 1.0)
    return out


def overhead(reference: nn.Module, protected: nn.Module, batch: torch.Tensor, repeats: int = 10) -> dict[str, float]:
    """Relative runtime and memory overhead of `protected` over `reference` (0.05 = +5 %)."""
    res = compare_inference({"reference": reference, "protected": protected}, batch, repeats)
    ref, prot = res["reference"], res["protected"]
    out = {"inference_ms_reference": ref["ms"], "inference_ms_protected": prot["ms"],
           "runtime_overhead": prot["ms"] / ref["ms"] - 1.0,
           "model_bytes_reference": float(ref["bytes"]), "model_bytes_protected": float(prot["bytes"]),
           "memory_overhead": prot["bytes"] / ref["bytes"] - 1.0}
    if ref["peak_cuda_bytes"]:
        out["peak_cuda_overhead"] = prot["peak_cuda_bytes"] / ref["peak_cuda_bytes"] - 1.0
    return out
