"""The sampler: which bits a trial flips, as a pure function of (seed, trial, tensor name).

Every bit flips independently with probability ``rate`` (a Bernoulli process over the bits), drawn
by geometric gaps between flipped bits: per tensor t with N_t bits this is exactly
K_t ~ Binomial(N_t, rate) distinct positions uniform without replacement, and the sum over tensors
is K ~ Binomial(N, rate) uniform over the fault space (DESIGN.md §2.1). No count is ever rounded
down. Each tensor reads its own counter-based (splitmix64) stream keyed by a hash of (seed, trial,
tensor name), so models that share tensor names (the unprotected and every protected one) get the
same faults in the shared tensors: comparisons between protections are paired. The draws of all
tensors are a few numpy operations, with no generator object per tensor.
"""
from __future__ import annotations

import hashlib
import math
import operator

import numpy as np

# Names the procedure that turns (seed, trial, tensor name) into a map. Logged with every fault
# space and part of every job key, so that results drawn by an earlier procedure are never reused
# as if they were this one's. Change it whenever the maps change.
SAMPLER = "splitmix64-geometric-gaps"


def check_rate(rate) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate={rate!r} is not allowed; use a number in [0, 1]") from None
    if not 0.0 <= r <= 1.0:  # also rejects NaN
        raise ValueError(f"rate={rate!r} is not allowed; use a number in [0, 1]")
    return r


def check_int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what}={value!r} is not allowed; use an integer") from None


# splitmix64 (Steele, Lea & Flood 2014): the stream of a 64-bit key is mix(key + j * GAMMA),
# j = 1, 2, ...; a counter-based generator, so any draw of any tensor is computed directly.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function (a bijection of uint64; arithmetic wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hash64(text: str) -> int:
    # hashlib, not hash(): Python's str hash is salted per process, and the map must be a pure
    # function of (seed, trial, name) across processes and machines.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def field_keys(name_hashes: np.ndarray, seed: int, trial: int) -> np.ndarray:
    """The 64-bit stream key of every tensor for (seed, trial): a function of the three only."""
    return mix64(name_hashes ^ np.uint64(hash64(f"{seed}\x1f{trial}")))


def bernoulli_positions(keys: np.ndarray, n_bits: np.ndarray, rate: float,
                         batch_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(field, position) of every flipped bit when each of the ``n_bits[t]`` bits of field t flips
    independently with probability ``rate``: sorted by field, then position.

    The gaps between flipped bits are geometric, G = floor(log U / log(1 - rate)) non-flipped bits
    before each flip, with U the field's own uniforms in stream order; a field ends at its first
    position >= n_bits[t]. So per field K_t ~ Binomial(n_t, rate) distinct positions, uniform,
    and never sorted or deduplicated. Each round draws about mean + 5 sd gaps for every
    unfinished field (times ``batch_scale``, which tests lower to force many rounds); the draws
    a field uses do not depend on that batching, so the map is the same whatever the other
    fields are.
    """
    log_keep = math.log1p(-rate) if rate < 1.0 else -math.inf  # -inf: every gap is 0, every bit flips
    lam = n_bits * rate
    batch = np.ceil(batch_scale * (lam + 5.0 * np.sqrt(lam) + 4.0)).astype(np.int64).clip(1, n_bits + 1)
    cap = float(n_bits.max())  # a gap this long ends any field; the cap keeps cumsum in int64
    pending = np.arange(n_bits.size)
    drawn = np.zeros(n_bits.size, dtype=np.int64)  # stream counters used so far
    last = np.full(n_bits.size, -1, dtype=np.int64)  # last position so far
    fields, positions = [], []
    while pending.size:
        m = batch[pending]
        seg_start = np.cumsum(m) - m
        # Counters drawn_t + 1 .. drawn_t + m_t of each field's stream (uint64 arithmetic wraps,
        # so the negative offset is exact modulo 2**64).
        first = keys[pending] + (drawn[pending] - seg_start).astype(np.uint64) * _GAMMA
        z = mix64(np.repeat(first, m) + np.arange(1, seg_start[-1] + m[-1] + 1, dtype=np.uint64) * _GAMMA)
        uniform = ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
        # The ratio is >= 0, so truncation is floor.
        steps = np.minimum(np.log(uniform) / log_keep, cap).astype(np.int64) + 1
        total = np.cumsum(steps)
        before = total[seg_start] - steps[seg_start]
        pos = total - np.repeat(before - last[pending], m)
        keep = pos < np.repeat(n_bits[pending], m)
        fields.append(np.repeat(pending, m)[keep])
        positions.append(pos[keep])
        drawn[pending] += m
        last[pending] = pos[seg_start + m - 1]
        pending = pending[last[pending] < n_bits[pending]]
    if len(fields) == 1:
        return fields[0], positions[0]
    fid, pos = np.concatenate(fields), np.concatenate(positions)
    order = np.argsort(fid, kind="stable")  # rounds append in position order within a field
    return fid[order], pos[order]


def sample_positions(name_hashes: np.ndarray, n_bits: np.ndarray, rate: float, seed: int,
                     trial: int) -> tuple[np.ndarray, np.ndarray]:
    """(field index, bit position within the field) of every bit flipped at (rate, seed, trial)."""
    if rate == 0.0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    return bernoulli_positions(field_keys(name_hashes, seed, trial), n_bits, rate)


def sample_positions_block(name_hashes: np.ndarray, n_bits: np.ndarray, rate: float, seed: int,
                           trials: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``sample_positions`` of each of ``trials``, drawn together: every (trial, field) is a field of
    one draw with its own stream key, so each trial's positions are exactly its own draw's."""
    fields = n_bits.size
    if rate == 0.0 or not trials:
        return [sample_positions(name_hashes, n_bits, rate, seed, t) for t in trials]
    keys = np.concatenate([field_keys(name_hashes, seed, t) for t in trials])
    field_idx, pos = bernoulli_positions(keys, np.tile(n_bits, len(trials)), rate)
    bounds = np.searchsorted(field_idx, np.arange(len(trials) + 1) * fields)
    return [(field_idx[a:b] - k * fields, pos[a:b]) for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def salted(name_hashes: np.ndarray, salt: str) -> np.ndarray:
    """Name hashes of an independent stream family (another fault model's draws, stuck values)."""
    return name_hashes ^ np.uint64(hash64(salt))


def stream_uniforms(keys: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The first ``counts[t]`` uniforms in (0, 1) of field t's stream, fields concatenated."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=np.float64)
    j = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    z = mix64(np.repeat(keys, counts) + j.astype(np.uint64) * _GAMMA)
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53


def per_field_counts(field_idx: np.ndarray, fields: int) -> np.ndarray:
    return np.bincount(field_idx, minlength=fields).astype(np.int64)


def split_positions(space, field_idx: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(element, bit) of bit positions within their fields."""
    if space.word_shift is not None:  # one power-of-two word width: shift, not divide
        return pos >> space.word_shift, pos & ((1 << space.word_shift) - 1)
    return np.divmod(pos, space.field_bits.numpy()[field_idx])


class BitFlips:
    """``memory``: every stored bit flips independently with probability ``rate``; or, with another
    rate unit (units.py: a ``RateUnit`` whose ``draw`` gives the hits), each word with probability
    ``rate``, or the authors' toolbox count."""

    fault_model, unit, bits_per_fault = "memory", "bit", 1
    _draw = None  # the rate unit's draw of (field, element, bit); None: per bit (sample_positions)

    def __init__(self, unit=None):
        if unit is not None and unit.name != "bit":
            self.unit, self._draw = unit.name, unit.draw

    def hits(self, hashes: np.ndarray, space, rate: float, seed: int, trial: int):
        """(field, element, bit) of the faulty bits of (rate, seed, trial) in the rate unit."""
        if self._draw is not None:
            return self._draw(hashes, space, rate, seed, trial)
        field_idx, pos = sample_positions(hashes, space.field_n_bits, rate, seed, trial)
        return (field_idx, *split_positions(space, field_idx, pos))

    def __call__(self, space, rate: float, seed: int, trial: int):
        return (*self.hits(space.field_name_hash, space, rate, seed, trial), None)

    def draw_block(self, space, rate: float, seed: int, trials: list[int]) -> list[tuple]:
        """``self(space, rate, seed, t)`` for each of ``trials``: one vectorised draw for plain bit
        flips (several maps per pass draw a block of maps; drawing them one by one cost as much as
        the pass of a small model), one call per trial for the fault models that draw more."""
        if type(self) is not BitFlips or self._draw is not None:
            return [self(space, rate, seed, t) for t in trials]
        return [(field_idx, *split_positions(space, field_idx, pos), None) for field_idx, pos in
                sample_positions_block(space.field_name_hash, space.field_n_bits, rate, seed, list(trials))]

    def units(self, space) -> int:
        """How many units the rate counts: words for a per-word rate, else bits."""
        return int(space.field_numel.sum()) if self.unit == "word" else space.num_bits


class StuckBits(BitFlips):
    """``stuck_at``: every stored bit is stuck with probability ``rate``, at ``value`` (0, 1, or
    ``"mix"``: 0 or 1 with probability 1/2 each, drawn per stuck bit). Positions come from a
    stream of their own, so they are not the ``memory`` model's flips."""

    fault_model = "stuck_at"
    VALUES = (0, 1, "mix")

    def __init__(self, value=1, unit=None):
        if value not in self.VALUES or isinstance(value, bool):
            raise ValueError(f"stuck value {value!r} is not allowed; choose one of: 0, 1, mix")
        super().__init__(unit)
        self.value = value

    def __call__(self, space, rate: float, seed: int, trial: int):
        hashes = salted(space.field_name_hash, "stuck_at")
        field_idx, elements, bits = self.hits(hashes, space, rate, seed, trial)
        if self.value == "mix":
            counts = per_field_counts(field_idx, len(space.fields))
            values = (stream_uniforms(field_keys(salted(hashes, "value"), seed, trial), counts) < 0.5).astype(np.int64)
        else:
            values = np.full(field_idx.size, self.value, dtype=np.int64)
        return field_idx, elements, bits, values


class Bursts(BitFlips):
    """``burst``: every stored word is hit with probability ``rate`` (a per-word rate), by an upset
    of ``length`` adjacent bits starting at a uniformly drawn bit that keeps it inside the word."""

    fault_model, unit = "burst", "word"

    def __init__(self, length: int = 2):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"burst length {length!r} is not allowed; use an integer >= 1")
        self.length = self.bits_per_fault = length

    def __call__(self, space, rate: float, seed: int, trial: int):
        widths = space.field_bits.numpy()
        if self.length > widths.min():
            raise ValueError(f"burst length {self.length} is longer than the {widths.min()}-bit words of the fault space")
        hashes = salted(space.field_name_hash, "burst")
        field_idx, words = sample_positions(hashes, space.field_numel.numpy(), rate, seed, trial)
        counts = per_field_counts(field_idx, len(space.fields))
        u = stream_uniforms(field_keys(salted(hashes, "start"), seed, trial), counts)
        start = np.floor(u * (widths[field_idx] - self.length + 1)).astype(np.int64)
        span = np.arange(self.length, dtype=np.int64)
        return (np.repeat(field_idx, self.length), np.repeat(words, self.length),
                (start[:, None] + span).reshape(-1), None)

Sampler = BitFlips
