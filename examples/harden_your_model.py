"""Harden your own model in a few lines, and measure what it buys (README, "Python API").

A small CNN with SiLU and LeakyReLU activations, trained on scikit-learn's bundled 8x8 digits with a
plain PyTorch loop, is protected with Ranger, Clip-Act and FitAct, and every variant faces the same
Q15.16 bit flips in its weights, biases and bounds (the same seed: paired trials).

    python examples/harden_your_model.py                  # ~1 minute on 2 CPU cores
    python examples/harden_your_model.py --mlflow /tmp/mlruns   # also log each campaign to MLflow
"""
import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fitact_pipeline import harden, measure_resilience


def digits_loaders(seed: int = 0):
    """Train / validation / test loaders of the digits, normalised, (N, 1, 8, 8)."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    parts = order[:1100], order[1100:1400], order[1400:]
    return [DataLoader(TensorDataset(x[p], y[p]), batch_size=64, shuffle=i == 0,
                       generator=torch.Generator().manual_seed(seed)) for i, p in enumerate(parts)]


def my_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.SiLU(), nn.Linear(64, 10))


def train(model: nn.Module, loader, epochs: int) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rates", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4, 3e-4])
    ap.add_argument("--mlflow", default=None, help="an MLflow store folder: log every campaign there")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    train_loader, val_loader, test_loader = digits_loaders()
    model = train(my_model(), train_loader, args.epochs)

    # the four lines this example is about
    hardened = {p: harden(model, p, train_loader, val_loader) for p in ("ranger", "clipact", "fitact")}
    log = {"experiment": "harden_your_model", "tracking_uri": f"sqlite:///{args.mlflow}/mlflow.db"} if args.mlflow else None
    results = {"none": measure_resilience(hardened["fitact"].reference, test_loader, args.rates, args.trials, mlflow=log)}
    results.update({p: measure_resilience(h, test_loader, args.rates, args.trials, mlflow=log) for p, h in hardened.items()})

    print("| protection | clean | " + " | ".join(f"{r:g}" for r in args.rates) + " |")
    print("|---|---|" + "---|" * len(args.rates))
    for name, res in results.items():
        print(f"| {name} | {100 * res.clean_accuracy:.1f} | " + " | ".join(f"{100 * res.mean(r):.1f}" for r in args.rates)
              + " |")
    print(f"FitAct post-training kept bounds at {hardened['fitact'].bounds_info['mean_bound_ratio']:.3f} of the profiled"
          f" maxima; {results['fitact'].fault_space['total_bits']:,} bits in the fault space")


if __name__ == "__main__":
    main()
