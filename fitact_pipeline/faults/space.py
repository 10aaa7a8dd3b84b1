"""The fault space: which stored tensors faults can hit (DESIGN.md §2.1), and storing them in the
chosen number format.

Selection is by target kind (a registry: weight and bias of convolution/linear layers, bounds of the
bounded activations, BatchNorm parameters and statistics, the scales of scaled formats) and by shell-glob patterns
on the full dotted tensor name (``include`` / ``exclude``, fnmatch, case-sensitive). Building the
space quantises the selected tensors in place, so the clean model is the stored model.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..layer_types import CONV_LINEAR
from ..registry import ConfigError, Registry
from .flip import FAMILIES
from .formats import FORMATS, Codec
from .layout import element_offset, gather_into_one_buffer
from .sampler import SAMPLER, hash64

_BN_ATTRS = ("weight", "bias", "running_mean", "running_var")
# nn.MultiheadAttention's own projection parameters (its out_proj is an nn.Linear: weight and bias)
_MHA_ATTRS = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v")


@dataclass(frozen=True)
class TargetKind:
    """A kind of stored tensor: ``selects(module, attr, is_param)``; or, for a kind that is part of
    a number format's storage (the scales of int8, int4 and MX), the format ``family`` that has it."""

    name: str
    summary: str
    selects: Callable[[nn.Module, str, bool], bool] | None = None
    family: str | None = None


TARGET_KINDS: Registry[TargetKind] = Registry("target kind")
for _kind in (TargetKind("weight", "parameter `weight` of `nn.Conv1d/2d/3d` and `nn.Linear`",
                         lambda m, a, p: p and a == "weight" and isinstance(m, CONV_LINEAR)),
              TargetKind("bias", "parameter `bias` of `nn.Conv1d/2d/3d` and `nn.Linear`",
                         lambda m, a, p: p and a == "bias" and isinstance(m, CONV_LINEAR)),
              TargetKind("bound", "every parameter named `bound` or `lower` (the bounded activations' upper "
                         "and lower bounds), and `weight_min` / `weight_max` (the clamp weight protection's)",
                         lambda m, a, p: p and a in ("bound", "lower", "weight_min", "weight_max")),
              TargetKind("batchnorm", "BatchNorm `weight`, `bias`, `running_mean`, `running_var` (when not folded)",
                         lambda m, a, p: a in _BN_ATTRS and isinstance(m, nn.modules.batchnorm._BatchNorm)),
              TargetKind("attention", "`nn.MultiheadAttention`'s in-projection parameters (`in_proj_weight`, "
                         "`in_proj_bias`, ...; its `out_proj` is an `nn.Linear`: weight, bias)",
                         lambda m, a, p: p and a in _MHA_ATTRS and isinstance(m, nn.MultiheadAttention)),
              TargetKind("layernorm", "LayerNorm / GroupNorm affine `weight` and `bias` (never folded)",
                         lambda m, a, p: p and a in ("weight", "bias") and isinstance(m, (nn.LayerNorm, nn.GroupNorm))),
              TargetKind("scale", "the stored scales of the selected tensors, named `<tensor>:scale` (int8/int4: "
                         "float32 per output channel; mxfp8/mxfp4: 8-bit E8M0 per block of 32)", family="scaled")):
    TARGET_KINDS.register(_kind.name, _kind)


def check_targets(targets: Sequence[str], fmt: str) -> tuple[str, ...]:
    targets = as_patterns(targets, "targets")
    if not targets:
        raise ConfigError(f"empty fault space: targets=[] selects nothing; choose at least one of: "
                          f"{', '.join(TARGET_KINDS)}")
    for name in targets:
        kind = TARGET_KINDS[name]
        if kind.family and FORMATS[fmt].family != kind.family:
            having = [repr(n) for n, f in FORMATS.items() if f.family == kind.family]
            raise ConfigError(f"target {name!r} needs fmt={', '.join(having[:-1])} or {having[-1]} (got "
                              f"fmt={fmt!r}); {name} exists only in the {kind.family} formats")
    if not any(TARGET_KINDS[t].selects for t in targets):
        raise ConfigError(f"targets={list(targets)} selects no stored tensor; add one of: "
                          + ", ".join(n for n, k in TARGET_KINDS.items() if k.selects))
    return targets


def as_patterns(value, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{what}={value!r} is not allowed; give a string or a list of strings") from None
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what} entry {item!r} is not allowed; entries must be strings")
    return items


@dataclass
class Slot:
    """One stored tensor of the model (a parameter or buffer), flattened view shared with it."""

    name: str
    kind: str
    flat: torch.Tensor
    elem_offset: int  # first element in the virtual concatenation of all slots
    scales: torch.Tensor | None = None  # scaled formats: clean per-channel scales (CPU)
    group: int = 1  # scaled formats: elements per row (an output channel)
    block: int = 1  # scaled formats: consecutive elements of a row sharing one scale


@dataclass
class Field:
    """One part of the fault space: a slot's words, or (int8) a slot's scales."""

    name: str
    kind: str
    slot: int
    numel: int
    bits: int
    is_scale: bool = False
    shape: tuple[int, ...] = ()  # the stored tensor's shape (a conv weight's first axis: its output channels)


def select_tensors(model: nn.Module, kinds: set[str], include: Sequence[str],
                   exclude: Sequence[str]) -> list[tuple[str, str, nn.Module, str, bool]]:
    """(name, kind, module, attribute, is_parameter) of every selected tensor, each once."""
    def matches(name: str) -> bool:
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in exclude)

    found, seen = [], set()
    for mod_name, module in model.named_modules():
        for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
            if tensor is None or id(tensor) in seen:
                continue
            is_param = attr in module._parameters
            name = f"{mod_name}.{attr}" if mod_name else attr
            kind = next((k for k in kinds if TARGET_KINDS[k].selects(module, attr, is_param)), None)
            if kind is not None and matches(name):
                seen.add(id(tensor))
                found.append((name, kind, module, attr, is_param))
    return found


class FaultSpace:
    """The selected tensors, stored in the format: slots (tensors), fields (what bits can flip), the
    one buffer when there is one, and the per-field arrays the sampler and the flipper read."""

    def __init__(self, codec: Codec, family: str, slots: list[Slot], fields: list[Field],
                 store: torch.Tensor | None, selection: dict):
        self.codec, self.family, self.slots, self.fields, self.store = codec, family, slots, fields, store
        self.selection = selection  # targets, include, exclude: for the description
        self.field_id = {f.name: i for i, f in enumerate(fields)}
        self.field_bits = torch.tensor([f.bits for f in fields], dtype=torch.int64)
        self.field_numel = torch.tensor([f.numel for f in fields], dtype=torch.int64)
        self.field_n_bits = np.array([f.numel * f.bits for f in fields], dtype=np.int64)
        self.field_name_hash = np.array([hash64(f.name) for f in fields], dtype=np.uint64)
        # first bit of each field in the virtual concatenation of all fields' bits
        self.field_bit_offset = torch.cumsum(self.field_numel * self.field_bits, 0) - self.field_numel * self.field_bits
        widths = {f.bits for f in fields}
        only = widths.pop() if len(widths) == 1 else 0
        self.word_shift = only.bit_length() - 1 if only and only & (only - 1) == 0 else None
        self.field_elem_offset = torch.tensor([slots[f.slot].elem_offset for f in fields], dtype=torch.int64)

    @classmethod
    def build(cls, model: nn.Module, fmt: str = "fixed", word_bits: int = 32, frac_bits: int = 16,
              targets: Sequence[str] = ("weight", "bias", "bound"), include: Sequence[str] = (),
              exclude: Sequence[str] = ()) -> "FaultSpace":
        """Select the tensors of ``model``, lay them out and quantise them in place."""
        number_format = FORMATS[fmt]
        codec = number_format.codec(word_bits, frac_bits)
        targets = check_targets(targets, fmt)
        include, exclude = as_patterns(include, "include"), as_patterns(exclude, "exclude")
        family = FAMILIES[number_format.family]
        found = select_tensors(model, {t for t in targets if TARGET_KINDS[t].selects}, include, exclude)
        if not found:
            raise ValueError(f"empty fault space: no tensor matches targets={list(targets)}, "
                             f"include={list(include)}, exclude={list(exclude)}")
        tensors = [(m._parameters if p else m._buffers)[a] for _, _, m, a, p in found]
        store = gather_into_one_buffer(tensors) if family.one_buffer else None
        slots, fields, running = [], [], 0
        for (name, kind, _, _, _), tensor in zip(found, tensors):
            slot = cls._store(family, codec, name, kind, tensor, store, running)
            fields.append(Field(name, kind, len(slots), slot.flat.numel(), codec.word_bits, shape=tuple(tensor.shape)))
            if "scale" in targets and slot.scales is not None:
                fields.append(Field(f"{name}:scale", "scale", len(slots), slot.scales.numel(), codec.scale_bits, True,
                                    (slot.scales.numel(),)))
            slots.append(slot)
            running += slot.flat.numel()
        return cls(codec, number_format.family, slots, fields, store,
                   {"targets": list(targets), "include": list(include), "exclude": list(exclude)})

    @staticmethod
    def _store(family, codec: Codec, name: str, kind: str, tensor: torch.Tensor, store, running: int) -> Slot:
        if tensor.dtype != torch.float32:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; the fault space must be float32")
        if not tensor.is_contiguous():
            tensor.data = tensor.data.contiguous()
        flat = tensor.detach().view(-1)
        slot = Slot(name, kind, flat, element_offset(store, flat, running))
        with torch.no_grad():
            family.quantise(codec, slot, tensor.shape)
        return slot

    @property
    def num_bits(self) -> int:
        return int(self.field_n_bits.sum())

    @property
    def total_elements(self) -> int:
        """Length of the virtual concatenation of the slots (the one buffer's length when there is one)."""
        if self.store is not None:
            return self.store.numel()
        return sum(s.flat.numel() for s in self.slots)

    def describe(self) -> dict:
        """JSON-able description of the fault space, logged with every run."""
        tensors = [{"name": f.name, "kind": f.kind, "elements": f.numel, "word_bits": f.bits,
                    "bits": f.numel * f.bits, "shape": list(f.shape)} for f in self.fields]
        return {**self.codec.describe(), "sampler": SAMPLER, **self.selection, "num_tensors": len(tensors),
                "total_elements": sum(t["elements"] for t in tensors),
                "total_bits": sum(t["bits"] for t in tensors), "tensors": tensors}
