"""Parity in the least significant bit of each stored word; a word that fails parity reads as zero.

The ``parity_zero`` weight protection (protect/weights.py) stores every fault-space word with its
bit 0 replaced by the parity of the other bits, so a clean word has an even number of ones. The
memory is read through the check: a word with an odd number of ones (an odd number of its bits
flipped, or stuck at the other value) decodes as 0. An even number of flipped bits in one word
passes unseen, as with any single parity bit. The lost bit is the price: every clean value moves by
at most its format's bit-0 step (Q15.16: 2^-16; float formats, fp8 included: one mantissa ulp;
int8/int4: one quantisation step of the channel's scale; MX: one element ulp times the block
scale), which the job measures as the clean accuracy before and after (``weight_protection_cost``).

In the scaled formats (int8, int4, mxfp8, mxfp4) the parity is in bit 0 of each element code
(``ParityScaledCodec``); the scales are stored without parity, so a scale fault is not caught. Why
not a parity bit in the scale too: the E8M0 scale's bit 0 is its exponent's lowest bit, and giving
it up would restrict MX blocks to every other power of two (a different format); a scale is one
word per 32 values (MX) or per output channel (int8), a place for a stronger code than one bit.

``ParityCodec`` wraps the fault space's word codec: every faulty word of a trial is decoded through
it (flip.py, one map at a time and several maps per pass alike), so the check happens on read.
"""
from __future__ import annotations

import numpy as np
import torch

from .formats import Codec


def parity_of(words: np.ndarray) -> np.ndarray:
    """1 where a word holds an odd number of ones (int64 words)."""
    return np.bitwise_count(words) & 1


def with_parity(words: np.ndarray) -> np.ndarray:
    """The words with bit 0 set to the parity of bits 1.. (so every word has even parity)."""
    high = words & ~np.int64(1)
    return high | parity_of(high)


def finite_parity(words: np.ndarray, decode) -> np.ndarray:
    """``with_parity(words)``, except where that would turn a finite value into NaN: E4M3's -448
    (0xFE, bits 1-7 all ones, odd) would become its NaN code 0xFF; such a word takes the code one
    step nearer zero first (0xFC, -384), whose parity bit is 0. No other format has a special code
    one bit-0 flip from a finite one (IEEE-like formats: bit 0 is a mantissa bit, the specials sit
    at the all-ones exponent)."""
    out = with_parity(words)
    bad = np.isnan(decode(out)) & ~np.isnan(decode(words))
    if bad.any():
        out[bad] = with_parity(words[bad] - 2)  # sign-magnitude: one step of bit 1 toward zero
    return out


class ParityCodec(Codec):
    """A word codec whose stored words carry parity in bit 0; ``decode`` reads a failing word as 0."""

    def __init__(self, inner: Codec):
        self.inner, self.name, self.word_bits = inner, inner.name, inner.word_bits

    def encode_np(self, values: np.ndarray) -> np.ndarray:
        return finite_parity(self.inner.encode_np(values), self.inner.decode_np)

    def decode_np(self, words: np.ndarray) -> np.ndarray:
        values = self.inner.decode_np(words)
        return np.where(parity_of(words).astype(bool), np.zeros_like(values), values)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encode_np(values.detach().cpu().numpy())).to(values.device)

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.decode_np(words.detach().cpu().numpy())).to(words.device)

    def describe(self) -> dict:
        return {**self.inner.describe(), "parity": "bit 0 = parity of bits 1.., failing word reads 0"}


class ParityScaledCodec:
    """A scaled-family codec (int8, int4, mxfp8, mxfp4) whose element codes carry parity in bit 0;
    a code failing it reads as 0. The scales are stored as before, without parity: their faults
    pass unchecked (docs/protections.md, "parity_zero")."""

    def __init__(self, inner):
        self.inner, self.name, self.word_bits = inner, inner.name, inner.word_bits
        self.scale_codec, self.scale_bits, self.layout = inner.scale_codec, inner.scale_bits, inner.layout

    def encode_q(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        words = self.inner.encode_q(values, scales).numpy()
        return torch.from_numpy(finite_parity(words, lambda w: self.inner.decode_q(torch.from_numpy(w), scales).numpy()))

    def decode_q(self, words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        values = self.inner.decode_q(words, scales)
        return torch.where(torch.from_numpy(parity_of(words.numpy()).astype(bool)), torch.zeros_like(values), values)

    def describe(self) -> dict:
        return {**self.inner.describe(), "parity": "bit 0 of each element code = parity of its bits 1.., failing code "
                "reads 0; scales without parity"}
