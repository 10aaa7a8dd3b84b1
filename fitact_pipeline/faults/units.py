"""What a fault rate counts (DESIGN.md §2.1): the ``faults.rate_unit`` setting and its draws.

- ``bit``: every stored bit flips with probability p (K ~ Binomial(bits, p); sampler.py).
- ``word``: every stored word is hit with probability p and gets one uniformly drawn bit flipped:
  per tensor K ~ Binomial(words, p) distinct words, so 1/word_bits as many flips as ``bit``.
- ``toolbox``: the counting rule of the FitAct authors' tool (reliable-relu-toolbox): per tensor
  exactly floor(numel x word_bits x p) faults (no randomness in the count, so small tensors get none
  at low rates), each an element and a bit drawn uniformly and independently, with replacement.
  Their tool applies the faults one after the other, each flipping the bit as it then is, so a bit
  drawn twice is flipped twice: back to its clean value. The map keeps the bits drawn an odd number
  of times (two draws on different bits of one word flip both).

Every draw reads the tensor's own counter-based stream keyed by (seed, trial, tensor name), so the
maps stay pure functions of those three and pair across protections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..registry import Registry
from .sampler import bernoulli_positions, field_keys, salted, stream_uniforms

AUTO = "auto"  # the fault model's own unit (the first of its rate_units)


def resolve(unit, native: str) -> str:
    """The unit a setting means: ``auto`` (or absent) is the fault model's own."""
    return native if unit in (None, AUTO) else unit


def suffix(unit: str, native: str) -> str:
    """What a curve label adds for a unit other than the fault model's own ('' for its own)."""
    return "" if unit == native else f" ({RATE_UNITS[unit].per})" if unit in RATE_UNITS else f" ({unit})"


def word_hits(hashes: np.ndarray, space, rate: float, seed: int, trial: int):
    """(field, element, bit) when every word is hit with probability ``rate``, one uniform bit each."""
    numel = space.field_numel.numpy()
    field_idx, words = bernoulli_positions(field_keys(salted(hashes, "word"), seed, trial), numel, rate) \
        if rate > 0 else (np.empty(0, np.int64), np.empty(0, np.int64))
    counts = np.bincount(field_idx, minlength=numel.size)
    u = stream_uniforms(field_keys(salted(hashes, "word-bit"), seed, trial), counts)
    bits = np.floor(u * space.field_bits.numpy()[field_idx]).astype(np.int64)
    return field_idx, words, bits


def toolbox_counts(space, rate: float) -> np.ndarray:
    """floor(elements x word_bits x rate) per tensor, in the toolbox's arithmetic (the integer
    product first, then one float multiply and truncation)."""
    return np.array([toolbox_count(int(n), rate) for n in space.field_n_bits], dtype=np.int64)


def toolbox_count(n_bits: int, rate: float) -> int:
    """floor(n_bits x rate) as the toolbox computes it (an integer product first, one float multiply)."""
    return int(n_bits * rate)


def toolbox_hits(hashes: np.ndarray, space, rate: float, seed: int, trial: int):
    """(field, element, bit) of the toolbox rule, a bit drawn an even number of times left out."""
    counts = toolbox_counts(space, rate)
    u = stream_uniforms(field_keys(salted(hashes, "toolbox"), seed, trial), 2 * counts).reshape(-1, 2)
    field_idx = np.repeat(np.arange(counts.size), counts)
    elements = np.floor(u[:, 0] * space.field_numel.numpy()[field_idx]).astype(np.int64)
    bits = np.floor(u[:, 1] * space.field_bits.numpy()[field_idx]).astype(np.int64)
    # one key per bit of the fault space; sorting by it also orders by (field, element, bit)
    key = space.field_bit_offset.numpy()[field_idx] + elements * space.field_bits.numpy()[field_idx] + bits
    _, first, times = np.unique(key, return_index=True, return_counts=True)
    odd = first[times % 2 == 1]
    return field_idx[odd], elements[odd], bits[odd]


@dataclass(frozen=True)
class RateUnit:
    name: str
    summary: str
    per: str  # what one unit of the rate counts, for axis labels and curve labels
    draw: Callable | None  # (hashes, space, rate, seed, trial) -> (field, element, bit); None: sampler's per bit
    expected_faults: Callable[[int, int, float], float]  # (words, word_bits, rate) -> mean faulty bits per tensor


RATE_UNITS: Registry[RateUnit] = Registry("rate unit")
for _unit in (RateUnit("bit", "each stored bit is faulty with probability = the rate (a bit error rate)", "per stored bit", None,
                       lambda words, word_bits, rate: words * word_bits * rate),
              RateUnit("word", "each stored word is hit with probability = the rate; a hit word gets one uniformly "
                       "drawn bit faulty (1/word_bits as many faults as per bit)", "per stored word", word_hits,
                       lambda words, word_bits, rate: words * rate),
              # the drawn count, before a bit drawn twice flips back (a second-order loss at these counts)
              RateUnit("toolbox", "the authors' tool's rule: per tensor exactly floor(elements x word_bits x rate) "
                       "faults, element and bit drawn uniformly with replacement (a bit drawn twice flips back)",
                       "per stored bit, toolbox count", toolbox_hits,
                       lambda words, word_bits, rate: float(toolbox_count(int(words * word_bits), rate)))):
    RATE_UNITS.register(_unit.name, _unit)
