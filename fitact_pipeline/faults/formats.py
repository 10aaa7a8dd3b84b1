"""Bit-exact number-format codecs for values stored in faulty memory.

A codec maps the float32 values a model computes with to the unsigned integer words that the
memory holds (``encode``) and back (``decode``). Words are int64 tensors holding the word's bits
in [0, 2**word_bits): bit 0 is the least significant bit, bit ``word_bits - 1`` is the sign bit.
A fault is ``decode(encode(v) ^ mask)``.

The model's tensors stay float32 (torch computes in float32); ``quantize`` rounds them to values
the format can hold, so that ``decode(encode(v)) == v`` bit for bit for every clean value. That
identity is what lets the injector restore a trial by writing back the saved float32 values.

See docs/faults.md for the format definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..registry import ConfigError, Registry


_MAGIC = 1.5 * 2.0 ** 52


def round_half_even(x: torch.Tensor) -> torch.Tensor:
    """Round float64 values with |x| < 2**51 to the nearest integer, ties to even.

    Adding and subtracting 1.5 * 2**52 makes the float64 addition itself do the rounding (IEEE
    default mode: nearest, ties to even), the same result as torch.round. Why not torch.round: its
    CPU kernel goes multi-threaded even for a few thousand elements, and on oversubscribed cores
    waking the thread pool costs milliseconds per call, more than the whole trial.
    """
    return (x + _MAGIC) - _MAGIC


def _to_signed(words: torch.Tensor, word_bits: int) -> torch.Tensor:
    """Two's-complement sign extension of unsigned ``word_bits``-bit words held in int64."""
    half = 1 << (word_bits - 1)
    return torch.where(words >= half, words - (1 << word_bits), words)


class Codec:
    """Interface: ``word_bits``, ``quantize``, ``encode``, ``decode`` (all on float32 tensors)."""

    name: str
    word_bits: int

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(values))

    def encode(self, values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, words: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"format": self.name, "word_bits": self.word_bits}

    def encode_np(self, values: np.ndarray) -> np.ndarray:
        """``encode`` on numpy arrays (float32 values -> int64 words): the fault injector's CPU
        path, where numpy's per-call cost is a fraction of torch's."""
        return self.encode(torch.from_numpy(values)).numpy()

    def decode_np(self, words: np.ndarray) -> np.ndarray:
        return self.decode(torch.from_numpy(words)).numpy()

    def flip(self, values: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``decode(encode(values) ^ masks)`` on numpy arrays (float32 values, int64 masks)."""
        return self.decode_np(self.encode_np(values) ^ masks)


class FixedCodec(Codec):
    """Two's-complement fixed point, ``word_bits`` total, ``frac_bits`` fraction bits.

    Encoding rounds to nearest (ties to even) and saturates to
    [-2**(w-1), 2**(w-1) - 1] steps. The arithmetic is done in float64, where every float32
    value times 2**frac_bits and every word of at most 32 bits is exact.

    float32 has a 24-bit significand, so a Q15.16 word with |value| >= 256 may need more bits
    than float32 holds. ``decode`` therefore rounds the exact float64 value once to float32
    (nearest). The stored clean value is then a float32 that is also a Q-format value (its ulp is
    a multiple of 2**-frac_bits), so encode/decode is the identity on it; a flip of a bit below
    float32's precision of that value is recorded as a flip but is absorbed by the float32 the
    network computes with (at most half a float32 ulp, i.e. relative 2**-24).
    """

    name = "fixed"

    def __init__(self, word_bits: int = 32, frac_bits: int = 16):
        if isinstance(word_bits, bool) or not isinstance(word_bits, int) or not 2 <= word_bits <= 32:
            raise ValueError(f"word_bits={word_bits!r} is not allowed; use an integer in [2, 32]")
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits < word_bits:
            raise ValueError(
                f"frac_bits={frac_bits!r} does not fit word_bits={word_bits}; "
                f"use an integer in [0, {word_bits - 1}]"
            )
        self.word_bits = word_bits
        self.frac_bits = frac_bits
        self._scale = float(2 ** frac_bits)
        self._lo = -(1 << (word_bits - 1))
        self._hi = (1 << (word_bits - 1)) - 1
        self._mask = (1 << word_bits) - 1

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        # Clamp first (the bounds are integers, so clamping then rounding equals rounding then
        # clamping) so the value is small enough for round_half_even; this also saturates inf.
        q = round_half_even((values.to(torch.float64) * self._scale).clamp_(self._lo, self._hi))
        return q.to(torch.int64) & self._mask

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return (_to_signed(words, self.word_bits).to(torch.float64) / self._scale).to(torch.float32)

    def encode_np(self, values: np.ndarray) -> np.ndarray:
        # np.rint rounds half to even, as encode does
        scaled = np.clip(values.astype(np.float64) * self._scale, self._lo, self._hi)
        return np.rint(scaled).astype(np.int64) & self._mask

    def decode_np(self, words: np.ndarray) -> np.ndarray:
        shift = 64 - self.word_bits  # to the top of the int64 and back: sign extension
        return (((words << shift) >> shift).astype(np.float64) / self._scale).astype(np.float32)

    def describe(self) -> dict:
        return {"format": "fixed", "word_bits": self.word_bits, "frac_bits": self.frac_bits}


class Float32Codec(Codec):
    """IEEE-754 binary32: the word is the float's own bit pattern (the int32 view)."""

    name = "float32"
    word_bits = 32

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(torch.float32)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return values.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return _to_signed(words, 32).to(torch.int32).view(torch.float32)

    def encode_np(self, values: np.ndarray) -> np.ndarray:
        return values.view(np.uint32).astype(np.int64)

    def decode_np(self, words: np.ndarray) -> np.ndarray:
        return words.astype(np.uint32).view(np.float32)


class _Float16Like(Codec):
    """A 16-bit float format held in a float32 tensor: every stored value is exactly
    representable in the 16-bit format, and faults flip bits of the 16-bit pattern."""

    word_bits = 16
    dtype: torch.dtype

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        # Saturate to the largest finite value instead of letting IEEE conversion overflow to
        # inf: the clean model must be finite. Weights never come near this in practice.
        big = torch.finfo(self.dtype).max
        return values.clamp(-big, big).to(self.dtype).to(torch.float32)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.dtype).view(torch.int16).to(torch.int64) & 0xFFFF

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return _to_signed(words, 16).to(torch.int16).view(self.dtype).to(torch.float32)


class Float16Codec(_Float16Like):
    name = "float16"
    dtype = torch.float16


class BFloat16Codec(_Float16Like):
    name = "bfloat16"
    dtype = torch.bfloat16


class SymmetricIntCodec(Codec):
    """Symmetric ``word_bits``-bit integers with a float32 scale per output channel (dim 0).

    Tensors with two or more dims get one scale per slice along dim 0; tensors with at most one
    dim (biases, layer bounds) get one scale for the whole tensor (a per-element scale would make
    every q equal to +-qmax and the format meaningless). qmax = 2**(word_bits-1) - 1;
    scale = max|v| / qmax in float32; an all-zero channel borrows the largest scale of its tensor
    (1.0 if the tensor is all zero). q = round(v / scale) clamped to [-qmax, qmax]; the stored
    float32 value is scale * q (float32 multiply). A fault may produce q = -qmax - 1. The words are
    the two's-complement q. ``encode_q``/``decode_q`` take the per-element scales explicitly; q is
    recovered from the stored value exactly (|q| <= 128 and one float32 rounding are far from a
    rounding boundary).

    The ``scaled`` family's interface (flip.py): ``quantize_tensor``, ``layout`` (elements per
    row, per scale block), ``encode_q``/``decode_q`` and ``scale_codec``/``scale_bits``, the
    format of the stored scales when they are in the fault space.
    """

    scale_bits = 32

    def __init__(self):
        self.qmax = (1 << (self.word_bits - 1)) - 1
        self.scale_codec = Float32Codec()

    def channel_scales(self, values: torch.Tensor) -> torch.Tensor:
        rows = values.reshape(values.shape[0], -1) if values.dim() >= 2 else values.reshape(1, -1)
        amax = rows.abs().amax(dim=1).to(torch.float32)
        scale = amax / float(self.qmax)
        fallback = scale.max() if bool((scale > 0).any()) else torch.tensor(1.0)
        return torch.where(scale > 0, scale, fallback).to(torch.float32)

    @staticmethod
    def element_channels(shape: torch.Size) -> int:
        """Number of consecutive flat elements that share one scale (one row)."""
        if len(shape) >= 2:
            return int(torch.Size(shape[1:]).numel())
        return max(int(torch.Size(shape).numel()), 1)

    def layout(self, shape: torch.Size) -> tuple[int, int]:
        """(elements per row, elements per scale block): one scale per row."""
        row = self.element_channels(shape)
        return row, row

    def encode_q(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        low = -self.qmax - 1
        q = round_half_even((values.to(torch.float64) / scales.to(torch.float64)).clamp_(low, self.qmax))
        return q.to(torch.int64) & ((1 << self.word_bits) - 1)

    def decode_q(self, words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return scales.to(torch.float32) * _to_signed(words, self.word_bits).to(torch.float32)

    def quantize_tensor(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (stored float32 values, per-channel scales) for a whole tensor."""
        scales = self.channel_scales(values)
        per_elem = scales.repeat_interleave(self.element_channels(values.shape))
        flat = values.reshape(-1).to(torch.float32)
        q = torch.round(flat.to(torch.float64) / per_elem.to(torch.float64)).clamp_(-self.qmax, self.qmax)
        stored = per_elem * q.to(torch.float32)
        return stored.reshape(values.shape), scales


class Int8Codec(SymmetricIntCodec):
    name = "int8"
    word_bits = 8


class Int4Codec(SymmetricIntCodec):
    name = "int4"
    word_bits = 4


@dataclass(frozen=True)
class NumberFormat:
    """A stored number format: its codec and its family.

    ``family`` picks how the injector quantises and flips (flip.py): ``word`` formats store one
    word per value and flip it through ``Codec.flip``; ``scaled`` (int8, int4, mxfp8, mxfp4) stores
    words plus a scale per block of consecutive elements (an output channel, or 32 values).
    ``sized`` formats take ``word_bits``/``frac_bits`` from the config; the others have fixed widths.
    """

    name: str
    codec: Callable[[int, int], Codec]
    summary: str = ""
    family: str = "word"
    sized: bool = False

    def label(self, word_bits: int, frac_bits: int) -> str:
        """How tags and tables name the format: Q15.16 for fixed point, else its name."""
        return f"Q{word_bits - frac_bits - 1}.{frac_bits}" if self.sized else self.name

    def check(self, word_bits, frac_bits) -> None:
        if not self.sized:  # unused, but a config value all the same: no value that is not a number
            for path, value in (("faults.word_bits", word_bits), ("faults.frac_bits", frac_bits)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ConfigError(f"{path}={value!r} is not allowed; expected an integer ({self.name} has a "
                                      "fixed width, so the value is not used)")
            return
        if isinstance(word_bits, bool) or not isinstance(word_bits, int) or not 2 <= word_bits <= 32:
            raise ConfigError(f"faults.word_bits={word_bits!r} is not allowed; fixed point needs an integer "
                              "2 <= word_bits <= 32")
        if isinstance(frac_bits, bool) or not isinstance(frac_bits, int) or not 0 <= frac_bits < word_bits:
            raise ConfigError(f"faults.frac_bits={frac_bits!r} is not allowed; fixed point needs an integer "
                              f"0 <= frac_bits < word_bits={word_bits}")


FORMATS: Registry[NumberFormat] = Registry("fault format")
_DEFINITIONS = (
    NumberFormat("fixed", FixedCodec, "word_bits (default 32), two's complement, frac_bits fraction bits (default "
                 "Q15.16: range [-32768, 32768), step 2^-16); round to nearest, ties to even, saturate. Q15.16: bit 0 "
                 "= ±2^-16, bit 16 = ±1, bit 30 = ±16384, bit 31 = ∓32768", sized=True),
    NumberFormat("float32", lambda w, f: Float32Codec(), "32 bits: the IEEE-754 bit pattern itself"),
    NumberFormat("float16", lambda w, f: Float16Codec(), "16 bits: values exactly representable in IEEE binary16 "
                 "(saturated to its largest finite value); flips hit the 16-bit pattern"),
    NumberFormat("bfloat16", lambda w, f: BFloat16Codec(), "16 bits: as float16, in bfloat16 (8 exponent bits)"),
    NumberFormat("int8", lambda w, f: Int8Codec(), "8 bits (+32 per scale): symmetric, scale = max|v|/127 per output "
                 "channel (dim 0) for tensors with >= 2 dims, one scale per tensor for biases and 0/1-dim bounds; "
                 "q = round(v/scale) in [-127, 127]; stored value = scale·q (float32). A flip may give q = -128. "
                 "An all-zero channel borrows its tensor's largest scale", family="scaled"),
    NumberFormat("int4", lambda w, f: Int4Codec(), "4 bits (+32 per scale): as int8 with qmax = 7: q in [-7, 7], "
                 "scale = max|v|/7 per output channel; a flip may give q = -8", family="scaled"),
)
for _format in _DEFINITIONS:
    FORMATS.register(_format.name, _format)


def make_codec(fmt: str, word_bits: int = 32, frac_bits: int = 16) -> Codec:
    """Build the codec of a format name; ``word_bits``/``frac_bits`` only apply to ``fixed``."""
    return FORMATS[fmt].codec(word_bits, frac_bits)
