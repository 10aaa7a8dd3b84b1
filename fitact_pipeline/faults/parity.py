"""Parity in the least significant bit of each stored word; a word that fails parity reads as zero.

The ``parity_zero`` weight protection (protect/weights.py) stores every fault-space word with its
bit 0 replaced by the parity of the other bits, so a clean word has an even number of ones. The
memory is read through the check: a word with an odd number of ones (an odd number of its bits
flipped, or stuck at the other value) decodes as 0. An even number of flipped bits in one word
passes unseen, as with any single parity bit. The lost bit is the price: every clean value moves by
at most its format's bit-0 step (Q15.16: 2^-16; float formats: one mantissa ulp), which the job
measures as the clean accuracy before and after (``weight_protection_cost``).

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


class ParityCodec(Codec):
    """A word codec whose stored words carry parity in bit 0; ``decode`` reads a failing word as 0."""

    def __init__(self, inner: Codec):
        self.inner, self.name, self.word_bits = inner, inner.name, inner.word_bits

    def encode_np(self, values: np.ndarray) -> np.ndarray:
        return with_parity(self.inner.encode_np(values))

    def decode_np(self, words: np.ndarray) -> np.ndarray:
        values = self.inner.decode_np(words)
        return np.where(parity_of(words).astype(bool), np.zeros_like(values), values)

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.encode_np(values.detach().cpu().numpy())).to(values.device)

    def decode(self, words: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.decode_np(words.detach().cpu().numpy())).to(words.device)

    def describe(self) -> dict:
        return {**self.inner.describe(), "parity": "bit 0 = parity of bits 1.., failing word reads 0"}
