"""What every bound training shares (FitAct's post-training, posttrain.py; ProAct's progressive
training, progressive.py): the trained bounds of a model, their range, the penalty that pulls them
down, and the diagnostics of how far they moved from the profiled maxima."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..activations import ACTIVATIONS
from .protections.fitact import FitReLU

RATIO_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def fitrelus(model: nn.Module) -> dict[str, FitReLU]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FitReLU)}


def bound_tensors(sites: dict[str, FitReLU]) -> dict[str, nn.Parameter]:
    """Every trained bound, ``<site>.bound`` and ``<site>.lower``, in site order."""
    return {f"{n}.{k}": t for n, m in sites.items() for k, t in m.bound_tensors().items()}


def bound_diagnostics(bounds: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]) -> dict:
    """How far the bounds moved from where profiling put them, per neuron and as a whole.

    ``mean_bound_ratio``: mean over bound tensors of mean(bound) / mean(profiled bound) (upper and
    lower bounds alike; tensors profiled at 0 skipped), the ratio of means that Eq. 8's selection
    reads. ``zero_fraction``: the fraction of all bound elements at exactly 0, i.e. neurons switched
    off (an upper bound at 0 zeroes every output). ``ratio_q<p>``: quantiles of the per-element
    ratio bound / profiled bound over every element profiled away from 0."""
    means, per_element, zeros, total = [], [], 0, 0
    for n, b in bounds.items():
        b, ref = b.detach().float(), initial[n].detach().float()
        lower = n.endswith(".lower")
        zeros += int((b == 0).sum()) if not lower else 0
        total += b.numel() if not lower else 0
        m = ref.mean().item()
        if m != 0 and (m > 0 or lower):
            means.append(b.mean().item() / m)
        nonzero = ref != 0
        per_element.append((b[nonzero] / ref[nonzero]).flatten())
    out = {"mean_bound_ratio": float(sum(means) / len(means)) if means else 1.0,
           "zero_fraction": zeros / total if total else 0.0}
    ratios = torch.cat(per_element) if per_element else torch.ones(1)
    ratios = ratios if ratios.numel() else torch.ones(1)
    qs = torch.quantile(ratios.double(), torch.tensor(RATIO_QUANTILES, dtype=torch.float64)) \
        if ratios.numel() <= 16_000_000 else torch.ones(len(RATIO_QUANTILES))
    out.update({f"ratio_q{int(round(100 * q)):02d}": float(v) for q, v in zip(RATIO_QUANTILES, qs)})
    return out


def bound_penalty(bounds, kind: str = "mean_square") -> torch.Tensor:
    """sum over bound tensors of mean(b^2) (``mean_square``) or of sum(|b|) (``sum``, Eq. 10 as
    written: zeta times the sum of all bounds; |.| so lower bounds too are pulled towards 0)."""
    if kind == "sum":
        return sum(b.abs().sum() for b in bounds)
    return sum(b.pow(2).mean() for b in bounds)


def keep_in_range(m: FitReLU) -> None:
    """Bounds stay where they mean something: b >= 0 (a negative bound cuts as much as 0) and <= the
    activation's cap; a <= 0 and >= its floor."""
    kind = ACTIVATIONS[m.kind]
    m.bound.clamp_(min=0.0, max=kind.cap)
    if hasattr(m, "lower"):
        m.lower.clamp_(min=kind.floor(m.settings) if kind.floor else None, max=0.0)
