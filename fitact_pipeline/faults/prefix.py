"""Prefix reuse: start a faulted pass at the first faulted stage, from cached clean activations.

A map with few faults leaves every layer before its first faulted tensor computing what the clean
model computes. For a model that is a chain of modules (``nn.Sequential``, nested ones flattened:
small_cnn, the VGGs' features and classifier when built as one chain), the clean input of every
stage is cached once for the image pool; a faulted pass on some pool images then starts at the stage
that holds the map's first faulted tensor (bounds included: a bound belongs to its activation's
stage). Per-image predictions are those of a full pass up to float rounding of batch composition
(the prefix is computed in the pool's batches): ``benchmarks/conditioned_validation.py --prefix``
counts the trials whose accuracy differs.

``ideal_saving`` is the share of a full pass's multiply-accumulates that a start at stage s skips.
"""
from __future__ import annotations

import torch
from torch import nn

from ..evaluate import correct_rows, eval_mode, float32_inference
from ..layer_types import hooked_forward

#: at most this many bytes of cached activations; a larger cache is refused (None returned)
MAX_CACHE_BYTES = 2 * 1024 ** 3


def chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """(dotted name, module) of the stages of a chain model, nested Sequentials flattened; None if
    the model is not a chain."""
    if not isinstance(model, nn.Sequential):
        return None
    stages = []
    for name, child in model.named_children():
        inner = chain(child)
        stages += [(f"{name}.{n}", m) for n, m in inner] if inner is not None else [(name, child)]
    return stages


class PrefixCache:
    """The clean input of every stage for the pool images (kept on the pool's device)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, batch_size: int):
        self.stages = chain(model)
        if self.stages is None:
            raise ValueError("prefix reuse needs a chain model (nn.Sequential)")
        self.batch_size = batch_size
        self.inputs: list[torch.Tensor] = []
        self.macs: list[int] = []
        with eval_mode(model), torch.inference_mode(), float32_inference(images.device):
            parts = [[] for _ in self.stages]
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].float()
                for i, (_, module) in enumerate(self.stages):
                    parts[i].append(x.clone())  # in-place activations would overwrite it
                    x = module(x)
            self.inputs = [torch.cat(p) for p in parts]
        self.macs = [_macs(m, x[:1]) for (_, m), x in zip(self.stages, self.inputs)]

    @classmethod
    def build(cls, model: nn.Module, images: torch.Tensor, batch_size: int) -> "PrefixCache | None":
        """A cache, or None where prefix reuse does not apply (not a chain, or too large a cache)."""
        stages = chain(model)
        if stages is None:
            return None
        cache = cls(model, images[:1], 1)
        if sum(t.numel() * 4 for t in cache.inputs) * len(images) > MAX_CACHE_BYTES:
            return None
        return cls(model, images, batch_size)

    def stage_of(self, tensor_name: str) -> int:
        """The stage holding a tensor (its module's dotted name starts with the stage's name)."""
        for i, (name, _) in enumerate(self.stages):
            if tensor_name.startswith(name + "."):
                return i
        return 0  # a tensor outside every stage: start at the beginning

    def first_stage(self, fault_map) -> int:
        if len(fault_map) == 0:
            return len(self.stages)
        used = torch.unique(fault_map.field_idx).tolist()
        return min(self.stage_of(fault_map.names[i].split(":")[0]) for i in used)

    def correct(self, start: int, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per image of ``ids``: right with the model as it is now (faulted), starting at stage
        ``start`` from the cached clean input of that stage."""
        parts = []
        with torch.inference_mode(), float32_inference(self.inputs[0].device):
            for begin in range(0, len(ids), self.batch_size):
                x = self.inputs[start][ids[begin:begin + self.batch_size]]
                for _, module in self.stages[start:]:
                    x = module(x)
                parts.append(correct_rows(x.float(), labels[begin:begin + self.batch_size]).cpu())
        return torch.cat(parts)

    def ideal_saving(self, start: int) -> float:
        """Share of a full pass's multiply-accumulates (conv and linear) before stage ``start``."""
        total = sum(self.macs)
        return sum(self.macs[:start]) / total if total else 0.0


def _macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of conv and linear layers in ``module`` for one input."""
    count = 0

    def hook(mod, inputs, output):
        nonlocal count
        if isinstance(mod, nn.modules.conv._ConvNd):
            count += output[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.Linear):
            count += output[0].numel() * mod.in_features

    hooked_forward(module, x, [m for m in module.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))],
                   hook, mode=torch.inference_mode)
    return count
