"""Several fault maps in one forward pass: ``torch.func.functional_call`` under ``vmap`` over the
fault-space tensors of K trials stacked along a new leading dimension.

Only the fault-space tensors differ between trials. The K maps are drawn together
(``FaultInjector.sample_block``) and become K rows of those tensors: for the word formats, which
keep the fault space in one buffer, each row is the clean buffer with its map's faulty words, all
K maps' words computed in one go (flip.rows_under_maps); otherwise each map is applied in place,
its tensors copied into row k, and removed. Then one vmapped pass evaluates all K models. vmap
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

from ..evaluate import eval_mode, float32_inference, predict_rows
from .flip import rows_under_maps


def stacked_fault_space(injector, rate: float, seed: int, trials: Sequence[int]) -> tuple[dict, list]:
    """({tensor name: (F, *shape) values under the faults of each of the F trials whose map changes
    a bit}, [each trial's fault map]). A map that changes no bit is the clean model: it gets no row
    (the campaign reads its accuracy off the clean pass, as with one map per pass)."""
    space = injector.space
    maps = injector.sample_block(rate, seed, trials)
    if space.store is not None:
        rows, changed = rows_under_maps(space, maps)
        for fmap, bits in zip(maps, changed):
            fmap.effective_flips = bits
        flat = {slot.name: rows[:, slot.elem_offset:slot.elem_offset + slot.flat.numel()] for slot in space.slots}
    else:
        flat = _rows_per_tensor(injector, maps)
    shapes = _shapes(injector.model)
    # contiguous per tensor, once per block (the pass reads each tensor once per batch)
    return {name: rows.reshape(rows.shape[:1] + shapes[name]).clone() for name, rows in flat.items()}, maps


def _rows_per_tensor(injector, maps: list) -> dict[str, torch.Tensor]:
    """{tensor name: rows of its values under each map that changed a bit} where each tensor has
    its own storage (int8: a scale fault changes a whole channel)."""
    slots = injector.space.slots
    stacks = [slot.flat.new_empty((len(maps), slot.flat.numel())) for slot in slots]
    count = 0
    for fmap in maps:
        with injector.inject_sampled(fmap):
            if fmap.effective_flips != 0:
                for stack, slot in zip(stacks, slots):
                    stack[count].copy_(slot.flat)
                count += 1
    return {slot.name: stack[:count] for stack, slot in zip(stacks, slots)}


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {**{n: p.shape for n, p in model.named_parameters()}, **{n: b.shape for n, b in model.named_buffers()}}


@torch.no_grad()
def predict_stacked(model: nn.Module, rows: dict, images: torch.Tensor, batch_size: int,
                    per_map_images: bool = False) -> torch.Tensor:
    """(K, images) top-1 of each of the K stacked models (MISS where a logit is not finite), on the
    CPU. ``images`` (N, ...) are shared by every map, or (K, n, ...) with ``per_map_images`` (each
    map its own images, the nested design)."""
    forward = vmap(lambda params, x: functional_call(model, params, (x,)), in_dims=(0, 0 if per_map_images else None))
    total = images.shape[1] if per_map_images else images.shape[0]
    device = next(iter(rows.values())).device
    parts = []
    with eval_mode(model), float32_inference(device):
        for start in range(0, total, batch_size):
            x = (images[:, start:start + batch_size] if per_map_images else images[start:start + batch_size])
            parts.append(predict_rows(forward(rows, x.to(device, torch.float32)).float()).cpu())
    return torch.cat(parts, dim=-1)
