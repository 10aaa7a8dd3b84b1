"""Several fault maps in one forward pass: ``torch.func.functional_call`` under ``vmap`` over the
fault-space tensors of K trials stacked along a new leading dimension.

Only the fault-space tensors differ between trials, so each trial's map is applied in place as usual
(the injector's flip path, every fault model that persists over a pass), its tensors are copied into
row k of the stacks, and the map is removed; then one vmapped pass evaluates all K models. vmap
turns a convolution whose weight is stacked into one grouped convolution, and a linear layer into a
batched matmul, so the fixed cost of a pass (Python, kernel launches, small layers that use the
cores badly) is paid once for K maps. The logits equal the one-map-at-a-time logits up to float
rounding (a grouped convolution sums in another order): tests/test_campaign_designs.py.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ..evaluate import count_correct


def stacked_fault_space(injector, rate: float, seed: int, trials: Sequence[int]) -> tuple[dict, list]:
    """({tensor name: (K, *shape) values under each trial's faults}, [each trial's fault map])."""
    space = injector.space
    shapes = _shapes(injector.model)
    rows = {slot.name: torch.empty((len(trials),) + shapes[slot.name], dtype=slot.flat.dtype,
                                   device=slot.flat.device) for slot in space.slots}
    maps = []
    for k, trial in enumerate(trials):
        with injector.inject(rate, seed, trial) as fmap:
            for slot in space.slots:
                rows[slot.name][k].view(-1).copy_(slot.flat)
        maps.append(fmap)
    return rows, maps


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {**{n: p.shape for n, p in model.named_parameters()}, **{n: b.shape for n, b in model.named_buffers()}}


@torch.no_grad()
def evaluate_stacked(model: nn.Module, rows: dict, images: torch.Tensor, labels: torch.Tensor,
                     batch_size: int, per_map_images: bool = False) -> list[float]:
    """Accuracy of each of the K stacked models. ``images`` (N, ...) are shared by every map, or
    (K, n, ...) with ``per_map_images`` (each map its own images, the nested design)."""
    model.eval()
    count = next(iter(rows.values())).shape[0]
    forward = vmap(lambda params, x: functional_call(model, params, (x,)), in_dims=(0, 0 if per_map_images else None))
    correct = [0] * count
    total = images.shape[1] if per_map_images else images.shape[0]
    device = next(iter(rows.values())).device
    with torch.autocast(device.type, enabled=False):
        for start in range(0, total, batch_size):
            x = (images[:, start:start + batch_size] if per_map_images else images[start:start + batch_size])
            y = labels[:, start:start + batch_size] if per_map_images else labels[start:start + batch_size]
            logits = forward(rows, x.to(device, torch.float32)).float()
            for k in range(count):
                correct[k] += count_correct(logits[k], y[k] if per_map_images else y)
    return [c / total for c in correct]
