"""Weight-side protections: what stops a memory fault where it enters, at the stored parameters.

They combine with every activation protection (config group ``weight_protection``, applied after
the activation protection and its bounds stage), one registry entry each:

- ``none``: the weights are read as stored.
- ``clamp``: every convolution/linear weight is clamped, when read, to its clean [min, max] (per
  tensor, or per output channel). The two bounds are stored values like the activation bounds:
  parameters ``weight_min`` / ``weight_max`` of the layer, selected by the ``bound`` target kind,
  so they are in the fault space whenever the bounds are, stored in the fault space's format like
  every other word. A NaN weight reads as 0 (a clamp cannot order NaN); a faulty bound clamps with
  its faulty value (min > max reads as max, torch.clamp).
- ``parity_zero``: bit 0 of every stored word of the fault space holds the parity of the others; a
  word failing it reads as 0 (faults/parity.py). Every stored format: the word formats' words, the
  element codes of int8, int4, mxfp8 and mxfp4 (their scales carry no parity). Needs
  stored-parameter faults (memory, stuck_at, burst).

Each entry has two steps: ``protect(model, cfg)`` before the fault space is built (the clamp's
modules and bounds) and ``attach(injector, cfg)`` after (the clamp's bounds at the stored weights'
range; the parity codec, which re-stores the space with its parity bits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_keys, expect_choice
from ..faults.flip import FAMILIES
from ..faults.lowbit import block_of
from ..faults.parity import ParityCodec, ParityScaledCodec, parity_of
from ..registry import ConfigError, Registry

CLAMP_GRANULARITIES = ("tensor", "channel")


def _read_weight(module: nn.Module) -> torch.Tensor:
    """The weight as the layer reads it: clamped to the stored bounds, NaN as 0."""
    w = module.weight
    return torch.where(torch.isnan(w), torch.zeros_like(w), torch.clamp(w, module.weight_min, module.weight_max))


class ClampedLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _read_weight(self), self.bias)


class _ClampedConv:
    """A convolution that reads its weight through the clamp (the mixin before the nn.Conv class)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _read_weight(self), self.bias)


class ClampedConv1d(_ClampedConv, nn.Conv1d):
    pass


class ClampedConv2d(_ClampedConv, nn.Conv2d):
    pass


class ClampedConv3d(_ClampedConv, nn.Conv3d):
    pass


_CLAMPED = {nn.Linear: ClampedLinear, nn.Conv1d: ClampedConv1d, nn.Conv2d: ClampedConv2d, nn.Conv3d: ClampedConv3d}


def clamp_weights(model: nn.Module, granularity: str = "tensor") -> int:
    """Give every convolution/linear layer clamp-on-read bounds at its clean weight range (in
    place); returns the number of bound values added. Layers of other (sub)classes are refused:
    their forward is not known to read ``weight`` once."""
    expect_choice(granularity, "weight_protection.granularity", CLAMP_GRANULARITIES)
    added = 0
    for name, module in model.named_modules():
        if type(module) in _CLAMPED.values():
            continue
        if isinstance(module, tuple(_CLAMPED)):
            if type(module) not in _CLAMPED:
                raise ConfigError(f"weight_protection=clamp cannot clamp layer {name!r} of type "
                                  f"{type(module).__name__}; it clamps {', '.join(t.__name__ for t in _CLAMPED)}")
            added += _add_bounds(module, granularity)
            module.__class__ = _CLAMPED[type(module)]  # same state, a forward that reads through the clamp
    return added


def _weight_range(w: torch.Tensor, granularity: str) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(1, w.dim())) if granularity == "channel" else tuple(range(w.dim()))
    low, high = w.amin(dim=dims, keepdim=True), w.amax(dim=dims, keepdim=True)
    if granularity == "tensor":
        low, high = low.reshape(()), high.reshape(())
    return low, high


def _add_bounds(module: nn.Module, granularity: str) -> int:
    low, high = _weight_range(module.weight.detach(), granularity)
    # parameters, not buffers: the fault space's `bound` kind selects parameters (stored like the activation bounds)
    module.weight_min = nn.Parameter(low.clone(), requires_grad=False)
    module.weight_max = nn.Parameter(high.clone(), requires_grad=False)
    return 2 * low.numel()


def _attach_clamp(injector, cfg: Mapping) -> None:
    """Bounds at the range of the weights as stored. ``protect`` took them from the float weights;
    a format that rounds a weight past its float range (int8/int4 with a channel scale set by the
    other sign, an MX block) would otherwise clip clean weights. Each bound is then stored in the
    format itself when it is in the fault space, and moved outward until its stored value encloses
    the weights (a bound stored alone may round inward: int8's scale * 127, E4M3's saturation at
    448 in a block of one). Word formats round monotonically: their bounds do not change here."""
    space = getattr(injector, "space", None)
    slots = {s.name: s for s in space.slots} if space is not None else {}
    family = FAMILIES[space.family] if space is not None else None
    with torch.no_grad():
        for name, module in injector.model.named_modules():
            if type(module) not in _CLAMPED.values():
                continue
            granularity = "tensor" if module.weight_min.dim() == 0 else "channel"
            low, high = _weight_range(module.weight.detach(), granularity)
            for attr, target, sign in (("weight_min", low, -1.0), ("weight_max", high, 1.0)):
                slot = slots.get(f"{name}.{attr}" if name else attr)
                if slot is None:  # not in the fault space: stored as the float32 it is
                    getattr(module, attr).copy_(target)
                else:
                    _store_enclosing(family, space.codec, slot, target.reshape(-1).cpu(), sign,
                                     getattr(module, attr).shape)
            if bool((_read_weight(module) != module.weight).any()):
                raise ValueError(f"layer {name!r}: the stored clamp bounds cut clean weights; this format cannot "
                                 "hold them outside the weight range")


def _store_enclosing(family, codec, slot, target: torch.Tensor, sign: float, shape: torch.Size) -> None:
    """Store ``target`` in ``slot`` so that every stored value is on the outer side of it
    (``sign`` +1: >= target, -1: <= target), moving a value that rounds inward outward by a
    doubling step (each bound is its own scale block in the scaled formats, so values move alone)."""
    value, step = target.clone(), torch.zeros_like(target)
    for _ in range(64):
        slot.flat.copy_(value.to(slot.flat.device))
        family.quantise(codec, slot, shape)
        stored = slot.flat.cpu()
        short = sign * (target - stored) > 0
        if not bool(short.any()):
            return
        gap = (target - stored).abs()
        step = torch.where(short, torch.maximum(2 * step, torch.maximum(gap, target.abs() * 2.0 ** -23)), step)
        value = torch.where(short, value + sign * step, value)
    raise ValueError(f"clamp bound {slot.name!r} cannot be stored enclosing the weights in format {codec.name}")


def _attach_parity(injector, cfg: Mapping) -> None:
    space = getattr(injector, "space", None)
    if space is None:
        raise ConfigError("weight_protection=parity_zero needs stored-parameter faults (faults.model memory, stuck_at "
                          "or burst), not activation faults: parity protects stored words")
    if space.family == "scaled":  # element codes get parity; the scales stay as they are (ParityScaledCodec)
        space.codec = ParityScaledCodec(space.codec)
        with torch.no_grad():
            for slot in space.slots:
                per_elem = slot.scales[block_of(torch.arange(slot.flat.numel()), slot.group, slot.block)]
                slot.flat.copy_(space.codec.decode_q(space.codec.encode_q(slot.flat.cpu(), per_elem), per_elem))
        return
    space.codec = ParityCodec(space.codec)
    with torch.no_grad():
        for slot in space.slots:  # re-store every word with its parity bit
            slot.flat.copy_(space.codec.quantize(slot.flat))
            # Q15.16 values of magnitude >= 256 keep bit 0 only as a float64; the float32 model would lose it
            if parity_of(space.codec.inner.encode_np(slot.flat.cpu().numpy())).any():
                raise ValueError(f"tensor {slot.name!r} holds values whose parity bit float32 cannot keep (fixed "
                                 f"point, |value| >= 2^(24 - frac_bits)); use fewer fraction bits or a float format")


def _nothing(*args) -> None:
    return None


@dataclass(frozen=True)
class WeightProtection:
    name: str
    summary: str
    config_keys: tuple[str, ...] = ()
    #: (model, cfg) -> None, before the fault space is built
    protect: Callable[[nn.Module, Mapping], Any] = field(default=_nothing)
    #: (fault injector, cfg) -> None, after
    attach: Callable[[Any, Mapping], None] = field(default=_nothing)


WEIGHT_PROTECTIONS: Registry[WeightProtection] = Registry("weight protection")
for _entry in (
    WeightProtection("none", "weights read as stored"),
    WeightProtection("clamp", "each conv/linear weight clamped on read to its clean [min, max] (per tensor or output "
                     "channel); the bounds are stored parameters in the fault space (target kind `bound`)",
                     ("granularity",), attach=_attach_clamp,
                     protect=lambda model, cfg: clamp_weights(model, cfg.get("granularity", "tensor"))),
    WeightProtection("parity_zero", "bit 0 of every stored word = parity of the other bits; a word failing parity "
                     "reads as 0", attach=_attach_parity),
):
    WEIGHT_PROTECTIONS.register(_entry.name, _entry)


def check_weight_protection_config(cfg: Mapping | None, faults: Mapping | None = None) -> None:
    """A one-line ConfigError for a bad ``weight_protection`` value, before any work."""
    if cfg is None:
        return
    entry = WEIGHT_PROTECTIONS.check("weight_protection.name", cfg.get("name"))
    check_keys(cfg, "weight_protection", ("name",) + entry.config_keys)
    if "granularity" in entry.config_keys:
        expect_choice(cfg.get("granularity", "tensor"), "weight_protection.granularity", CLAMP_GRANULARITIES)
    if entry.name == "parity_zero" and faults is not None and faults.get("model") == "activation":
        # every stored format has parity (word or element codes); activation faults never read a stored word
        raise ConfigError("weight_protection=parity_zero needs stored-parameter faults; got faults.model='activation' "
                          "(allowed: memory, stuck_at, burst)")
