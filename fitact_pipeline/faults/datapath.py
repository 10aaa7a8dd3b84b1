"""The activation datapath: float32 (no limit, as torch computes), or a word format in which every
activation is stored between layers (DESIGN.md §2.6). A fixed-point datapath rounds and saturates
the output of every convolution and linear layer and of every activation site to the format's
range, as a fixed-point accelerator does, so a faulty weight saturates an activation instead of
driving it to inf; the activation fault model flips bits of these words."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..activations import kind_of
from ..layer_types import CONV_LINEAR
from .formats import FORMATS, FixedCodec


def datapath_codec(datapath: Mapping):
    """The codec of a ``faults.datapath`` config (fmt, word_bits, frac_bits)."""
    return FORMATS[datapath["fmt"]].codec(datapath.get("word_bits", 32), datapath.get("frac_bits", 16))


def stores_activations(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are activations between layers: conv/linear layers and sites."""
    return [m for m in model.modules() if isinstance(m, CONV_LINEAR) or kind_of(m) is not None]


def apply_datapath(model: nn.Module, datapath: Mapping) -> list:
    """Round every activation to the datapath format (nothing for float32); returns the hook
    handles. Registered before any fault hook, so activation faults flip the stored words."""
    if datapath["fmt"] == "float32":
        return []
    codec = datapath_codec(datapath)
    rounding = fixed_point_rounding(codec) if isinstance(codec, FixedCodec) else codec.quantize

    def store(_module, _inputs, out: torch.Tensor) -> torch.Tensor:
        return rounding(torch.nan_to_num(out, nan=0.0))  # fixed point holds no NaN

    return [m.register_forward_hook(store) for m in stores_activations(model)]


def fixed_point_rounding(codec: FixedCodec):
    """``codec.quantize`` in float32 arithmetic on float32 values, a few times cheaper than the
    codec's float64 path and equal to it (tests/test_fault_models.py): scaling by 2**frac_bits is
    exact, a scaled float32 at or above 2**24 is already an integer, and the largest word,
    2**(w-1) - 1, rounds to the same float32 either way."""
    scale = float(2 ** codec.frac_bits)
    low, high = float(-(1 << (codec.word_bits - 1))), float((1 << (codec.word_bits - 1)) - 1)

    def rounding(values: torch.Tensor) -> torch.Tensor:
        return torch.round(values * scale).clamp_(low, high).div_(scale).add_(0.0)  # -0.0 -> 0.0, as the words
    return rounding
