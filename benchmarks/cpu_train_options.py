"""Which training options pay on this CPU: images/s of forward + backward + SGD step for full-width
VGG16 (BN) and AlexNet on 32x32 inputs, float32 NCHW (what training.py does today), channels_last,
bf16 autocast, both together, at batch 128 and 256.

    OMP_NUM_THREADS=1 python benchmarks/cpu_train_options.py                  # ~4 min on 1 thread
    OMP_NUM_THREADS=1 python benchmarks/cpu_train_options.py --rounds 2 --models alexnet

The options are measured side by side in one process and interleaved (one timed step of every option
per round, the rounds repeated), so a load change on a shared machine hits all options alike: the
ratios are the result, the absolute numbers depend on what else runs. Each option has its own model
copy and optimizer; one untimed warm-up step per option (oneDNN picks and caches its kernels for the
layout and dtype) comes before the first round. An option's figure is its median step time over the
rounds. Inputs are random (throughput does not depend on pixel values). The last printed line is
JSON. From the best option of each model it prints the estimated epoch time on 45,000 training
images and how many epochs fit in the model's budget (VGG16 2 h, AlexNet 1 h), validation excluded.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fitact_pipeline.models import build_model  # noqa: E402

#: option name -> (channels_last, bf16 autocast)
OPTIONS = {"fp32": (False, False), "channels_last": (True, False), "bf16": (False, True),
           "bf16+channels_last": (True, True)}
BUDGET_H = {"vgg16": 2.0, "alexnet": 1.0}
TRAIN_IMAGES = 45_000


class Option:
    """One model copy trained with one memory format, dtype policy and batch size."""

    def __init__(self, model: torch.nn.Module, name: str, batch_size: int, seed: int):
        self.name, self.batch_size = name, batch_size
        self.channels_last, self.autocast = OPTIONS[name]
        self.model = copy.deepcopy(model).train()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4)
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch_size, 3, 32, 32, generator=gen)
        if self.channels_last:
            self.x = self.x.contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch_size,), generator=gen)
        self.times: list[float] = []

    def step(self) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start

    def images_per_s(self) -> float:
        return self.batch_size / statistics.median(self.times)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "alexnet"], choices=sorted(BUDGET_H))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 256])
    p.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    p.add_argument("--rounds", type=int, default=3, help="timed steps per option (interleaved)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    result = {"threads": a.threads, "rounds": a.rounds, "models": {}}
    for name in a.models:
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=3, width=1.0)
        options = [Option(model, o, b, seed=b) for b in a.batch_sizes for o in a.options]
        for opt in options:  # warm-up, untimed
            opt.step()
        for _ in range(a.rounds):
            for opt in options:
                opt.times.append(opt.step())
        rows = {f"{o.name} b{o.batch_size}": round(o.images_per_s(), 1) for o in options}
        base = rows[f"fp32 b{a.batch_sizes[0]}"] if "fp32" in a.options else None
        print(f"\n{name} (width 1.0), {a.threads} thread(s), median of {a.rounds} interleaved steps:")
        for key, ips in rows.items():
            ratio = f"  x{ips / base:.2f} vs fp32 b{a.batch_sizes[0]}" if base else ""
            print(f"  {key:<26} {ips:8.1f} images/s{ratio}")
        best = max(rows, key=rows.get)
        epoch_s = TRAIN_IMAGES / rows[best]
        epochs = int(BUDGET_H[name] * 3600 // epoch_s)
        print(f"  best: {best}: {epoch_s / 60:.1f} min per {TRAIN_IMAGES}-image epoch -> {epochs} epochs "
              f"in {BUDGET_H[name]:g} h (validation excluded)")
        result["models"][name] = {"images_per_s": rows, "best": best, "epoch_s": round(epoch_s, 1),
                                  "epochs_in_budget": epochs, "budget_h": BUDGET_H[name]}
        del options
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
