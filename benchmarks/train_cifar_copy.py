"""Train one baseline on the CIFAR-10 ImageFolder copy and report time and clean test accuracy.

    python benchmarks/train_cifar_copy.py --model vgg16 --width 0.25 --epochs 15

Uses the default recipe of DESIGN.md §3 (train_baseline's DEFAULTS) unless overridden; writes
per-epoch metrics and the weights under --out. Stand-in for the Hydra entry point
(`python -m fitact_pipeline model=vgg16 model.width=0.25 dataset=cifar10_copy ...`).
The last printed line is JSON.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fitact_pipeline.data import ImageFolderDataModule  # noqa: E402
from fitact_pipeline.models import build_model  # noqa: E402
from fitact_pipeline.evaluate import accuracy
from fitact_pipeline.training import train_baseline  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="vgg16")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--max-time-s", type=float, default=None)
    p.add_argument("--train-subset", type=int, default=None)
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=".cache/runs")
    p.add_argument("--cache-dir", default=".cache/data", help="where the decoded ImageFolder tensors go")
    p.add_argument("--progress-bar", action="store_true")
    a = p.parse_args()

    start = time.perf_counter()
    dm = ImageFolderDataModule(a.root, name="cifar10_copy", train_subset=a.train_subset, seed=a.seed,
                               cache_dir=a.cache_dir)
    dm.setup()
    load_s = time.perf_counter() - start
    model = build_model(a.model, dm.num_classes, dm.in_channels, a.width)
    out = os.path.join(a.out, f"{a.model}-w{a.width}-e{a.epochs}-s{a.seed}")
    cfg = {"epochs": a.epochs, "lr": a.lr, "max_time_s": a.max_time_s, "progress_bar": a.progress_bar}
    info = train_baseline(model, dm, cfg, seed=a.seed, output_dir=out)
    test_acc = accuracy(model, dm.test_dataloader())
    result = {"model": a.model, "width": a.width, "params": sum(p.numel() for p in model.parameters()),
              "data_load_s": round(load_s, 2), **info, "test_acc": test_acc, "train_cfg": cfg, "out": out}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
