"""Low-bit stored formats: OCP FP8 (E4M3, E5M2) and OCP Microscaling (MXFP8, MXFP4) codecs.

FP8 (OCP 8-bit Floating Point Specification, v1.0): E4M3 has 4 exponent bits (bias 7), 3
mantissa bits, no infinities and one NaN pattern per sign (S.1111.111), largest finite 448,
smallest subnormal 2^-9. E5M2 is IEEE-like: 5 exponent bits (bias 15), 2 mantissa bits,
infinities and NaNs, largest finite 57344, smallest subnormal 2^-16. Conversion rounds to nearest,
ties to even, and saturates: a value beyond the largest finite (inf included) becomes the largest
finite of its sign (the specification's saturating mode). torch's own float8 dtypes do the
rounding; torch already saturates E4M3 but lets E5M2 overflow to inf, so both clamp first.

MX (OCP Microscaling Formats Specification, v1.0): a block of 32 values shares one E8M0 scale,
an 8-bit unsigned power-of-two exponent X = 2^(code - 127) (0xFF = NaN); the elements are FP8 E4M3
(MXFP8) or FP4 E2M1 (MXFP4: 1 sign, 2 exponent bits of bias 1, 1 mantissa bit; values 0, 0.5, 1,
1.5, 2, 3, 4, 6; no inf, no NaN). The scale follows the specification:
shared_exp = floor(log2(max|v|)) - emax_elem (8 for E4M3, 2 for E2M1), clamped to E8M0's range
[-127, 127] (an all-zero block gets -127); each element is v / X rounded (nearest, ties to even)
and saturated to the element format. Blocks run along each output channel's flattened row
(dim 0 slices; the reduction dimension of a linear layer, and of a convolution as im2col sees
it), the last block of a row shorter when the row is not a multiple of 32; tensors with at most
one dim are one row. The scales are stored words: with target ``scale`` they are in the fault
space as ``<tensor>:scale``, one 8-bit word per block.
"""
from __future__ import annotations

import torch

from .formats import FORMATS, Codec, NumberFormat, SymmetricIntCodec

MX_BLOCK = 32


class Float8Codec(Codec):
    """An OCP FP8 format as a word format: the word is the float8 bit pattern (torch's dtype)."""

    word_bits = 8

    def __init__(self, name: str, dtype: torch.dtype, emax: int):
        self.name, self.dtype, self.emax = name, dtype, emax
        self.max = float(torch.finfo(dtype).max)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        # clamp keeps NaN; casting float32 (not float64) so torch rounds once from the stored value
        clamped = values.to(torch.float32).clamp(-self.max, self.max)
        return clamped.to(self.dtype).view(torch.uint8).to(torch.int64)

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return words.to(torch.uint8).view(self.dtype).to(torch.float32)


class E2M1Codec(Codec):
    """OCP FP4 E2M1 (4-bit words: sign bit 3, exponent bits 2-1, mantissa bit 0). torch has no
    convertible 4-bit float dtype, so the conversion is a threshold table: a magnitude rounds up
    past each midpoint between neighbouring values, and at a midpoint to the even code."""

    name, word_bits, emax = "fp4_e2m1", 4, 2
    VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
    # midpoint between code k and k+1, and whether a tie goes up (code k+1 even)
    _MIDPOINTS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True), (2.5, False), (3.5, True), (5.0, False))

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        v = values.to(torch.float64)
        mag = v.abs()
        code = torch.zeros(v.shape, dtype=torch.int64, device=v.device)
        for mid, tie_up in self._MIDPOINTS:  # beyond 6 (inf included) saturates to code 7
            code += ((mag >= mid) if tie_up else (mag > mid)).to(torch.int64)
        return code | (torch.signbit(v).to(torch.int64) << 3)

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        table = torch.tensor(self.VALUES, dtype=torch.float32, device=words.device)
        mag = table[words & 7]
        return torch.where((words & 8) != 0, -mag, mag)


class E8M0Codec(Codec):
    """The MX shared scale: 8-bit biased exponent, value 2^(code - 127), code 0xFF = NaN."""

    name, word_bits = "e8m0", 8

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        exponent = torch.frexp(values.to(torch.float64)).exponent.to(torch.int64) - 1  # exact for 2^k
        return torch.where(torch.isnan(values), 255, (exponent + 127).clamp(0, 254))

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return words.to(torch.uint8).view(torch.float8_e8m0fnu).to(torch.float32)


class MXCodec(Codec):
    """Blocks of 32 elements of ``element`` sharing one E8M0 scale (the ``scaled`` family)."""

    scale_bits = 8

    def __init__(self, name: str, element: Codec):
        self.name, self.element, self.word_bits = name, element, element.word_bits
        self.scale_codec = E8M0Codec()

    def layout(self, shape: torch.Size) -> tuple[int, int]:
        """(elements per row, elements per scale block)."""
        return SymmetricIntCodec.element_channels(shape), MX_BLOCK

    def block_scales(self, values: torch.Tensor) -> torch.Tensor:
        """The shared scale X of every block (rows padded with zeros to whole blocks), float32."""
        row, block = self.layout(values.shape)
        rows = values.reshape(-1, row).abs().to(torch.float32)
        pad = -row % block
        amax = torch.nn.functional.pad(rows, (0, pad)).reshape(rows.shape[0], -1, block).amax(dim=2).reshape(-1)
        floor_log2 = torch.frexp(amax).exponent.to(torch.int64) - 1  # amax = m 2^e, m in [0.5, 1)
        shared = torch.where(amax > 0, floor_log2 - self.element.emax, -127).clamp(-127, 127)
        return torch.ldexp(torch.ones(shared.shape, dtype=torch.float64), shared).to(torch.float32)

    def encode_q(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        # v / X is exact (X a power of two); float32 before the element cast so it rounds once
        return self.element.encode((values.to(torch.float64) / scales.to(torch.float64)).to(torch.float32))

    def decode_q(self, words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        return (self.element.decode(words).to(torch.float64) * scales.to(torch.float64)).to(torch.float32)

    def quantize_tensor(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(stored float32 values, per-block scales) of a whole tensor, computed on the CPU (as the
        scaled family's flips are)."""
        values = values.detach().cpu()
        scales = self.block_scales(values)
        row, block = self.layout(values.shape)
        flat = values.reshape(-1)
        per_elem = scales[block_of(torch.arange(flat.numel()), row, block)]
        stored = self.decode_q(self.encode_q(flat, per_elem), per_elem)
        return stored.reshape(values.shape), scales

    def describe(self) -> dict:
        return {"format": self.name, "word_bits": self.word_bits, "block": MX_BLOCK, "scale_bits": self.scale_bits}


def blocks_per_row(row: int, block: int) -> int:
    return -(-row // block)


def block_of(local: torch.Tensor, row: int, block: int) -> torch.Tensor:
    """The scale block of each flat element index (rows of ``row`` elements, blocks of ``block``)."""
    return (local // row) * blocks_per_row(row, block) + (local % row) // block


def block_elements(blocks: torch.Tensor, row: int, block: int) -> torch.Tensor:
    """The flat element indices of sorted unique ``blocks``, ascending (the inverse of block_of)."""
    per_row = blocks_per_row(row, block)
    first = (blocks // per_row) * row + (blocks % per_row) * block
    size = torch.clamp(row - (blocks % per_row) * block, max=block)
    offsets = torch.arange(block, dtype=torch.int64)
    return (first[:, None] + offsets)[offsets < size[:, None]]


# codecs hold no state: one instance each
E4M3 = Float8Codec("fp8_e4m3", torch.float8_e4m3fn, emax=8)
E5M2 = Float8Codec("fp8_e5m2", torch.float8_e5m2, emax=15)

for _format in (
    NumberFormat("fp8_e4m3", lambda w, f: E4M3,
                 "8 bits, OCP FP8 E4M3: sign 7, exponent 6-3 (bias 7), mantissa 2-0; no inf, NaN = S.1111.111; "
                 "max 448, min subnormal 2^-9; round to nearest even, saturating (torch.float8_e4m3fn)"),
    NumberFormat("fp8_e5m2", lambda w, f: E5M2,
                 "8 bits, OCP FP8 E5M2: sign 7, exponent 6-2 (bias 15), mantissa 1-0; IEEE-like inf/NaN; max 57344, "
                 "min subnormal 2^-16; round to nearest even, saturating (torch.float8_e5m2)"),
    NumberFormat("mxfp8", lambda w, f: MXCodec("mxfp8", E4M3),
                 "8 bits (+8 per block of 32): OCP MX, FP8 E4M3 elements sharing an E8M0 power-of-two scale per 32 "
                 "consecutive values of an output channel's row; shared_exp = floor(log2 max|v|) - 8; scale 0xFF = "
                 "NaN", family="scaled"),
    NumberFormat("mxfp4", lambda w, f: MXCodec("mxfp4", E2M1Codec()),
                 "4 bits (+8 per block of 32): OCP MX, FP4 E2M1 elements (sign 3, exponent 2-1, mantissa 0: 0, 0.5, "
                 "1, 1.5, 2, 3, 4, 6) sharing an E8M0 scale per 32 values; shared_exp = floor(log2 max|v|) - 2",
                 family="scaled"),
):
    FORMATS.register(_format.name, _format)
