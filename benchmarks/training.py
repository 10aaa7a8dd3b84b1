"""Training and inference throughput (images/s) per model and width on this machine.

    python benchmarks/training.py                       # default grid, CPU (and CUDA if present)
    python benchmarks/training.py --models vgg16 --widths 0.25 0.5 --batches 5

Training = forward + backward + SGD step in train mode; inference = forward in eval mode under
no_grad. Inputs are random 32x32 tensors (throughput does not depend on pixel values). One warm-up
batch is excluded from the timing. The last printed line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fitact_pipeline.models import build_model  # noqa: E402

DEFAULT_GRID = [("small_cnn", 1.0), ("alexnet", 0.5), ("alexnet", 1.0), ("vgg16", 0.25), ("vgg16", 0.5),
                ("resnet50", 0.25), ("resnet50", 0.5)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def images_per_s(step, batch_size: int, batches: int, device: torch.device) -> float:
    step()  # warm-up: allocator, cuDNN autotuning, lazy init
    sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        step()
    sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def measure(name: str, width: float, device: torch.device, batch_size: int, batches: int) -> dict:
    model = build_model(name, num_classes=10, in_channels=3, width=width).to(device)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    @torch.no_grad()
    def infer_step():
        model(x)

    model.train()
    train = images_per_s(train_step, batch_size, batches, device)
    model.eval()
    infer = images_per_s(infer_step, batch_size, batches, device)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "width": width, "device": device.type, "params": params,
            "train_img_s": round(train, 1), "infer_img_s": round(infer, 1)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="model names (default: the built-in grid)")
    parser.add_argument("--widths", nargs="*", type=float, default=[0.25, 0.5])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args(argv)

    grid = [(m, w) for m in args.models for w in args.widths] if args.models else DEFAULT_GRID
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    torch.backends.cudnn.benchmark = True
    results = []
    for device in devices:
        for name, width in grid:
            row = measure(name, width, device, args.batch_size, args.batches)
            results.append(row)
            print(f"{device.type:5s} {name:10s} width {width:<5} params {row['params']:>10,}  "
                  f"train {row['train_img_s']:>9.1f} img/s  infer {row['infer_img_s']:>9.1f} img/s", flush=True)
    summary = {"threads": torch.get_num_threads(), "batch_size": args.batch_size, "batches": args.batches,
               "torch": torch.__version__, "results": results}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
