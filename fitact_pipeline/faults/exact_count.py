"""Fault maps with exactly k faults (the count-conditioned design, conditioned.py).

The fault space splits in two parts: the tensors every protection of a model shares (weights,
biases, scales: every field that is not a bound) and each protection's own tensors (its bounds).
Map (k, j, trial) has exactly k faults uniform without replacement over the shared part and j over
the own part, each part a pure function of (seed, k, j, trial) and of the part's tensor names and
sizes. The shared part is laid out in name order, so two protections of one model (the same shared
tensors) get the same shared faults for the same (seed, k, j, trial): comparisons stay paired.

The fault unit is what the rate counts (the sampler's ``unit``): a bit (memory, stuck_at: with the
stuck value drawn per bit for ``mix``) or a word (burst: the upset's start bit drawn uniformly, the
burst kept in the word; a per-word rate of memory or stuck_at: one uniform bit of the word). The
toolbox count (a fixed count per tensor, no binomial) has no conditioned form and is refused.
"""
from __future__ import annotations

import numpy as np

from .faultmap import FaultMap
from .sampler import Bursts, StuckBits, field_keys, hash64, split_positions, stream_uniforms

_PARTS = ("shared", "own")


def part_fields(space) -> dict[str, np.ndarray]:
    """Field indices of the shared part (name order) and of the own part (the bounds, name order)."""
    order = sorted(range(len(space.fields)), key=lambda i: space.fields[i].name)
    own = [i for i in order if space.fields[i].kind == "bound"]
    shared = [i for i in order if space.fields[i].kind != "bound"]
    return {"shared": np.array(shared, dtype=np.int64), "own": np.array(own, dtype=np.int64)}


def rate_unit(sampler) -> str:
    """The unit the sampler's rate counts, refused with a one-line error where no binomial count exists."""
    unit = getattr(sampler, "unit", "bit")
    if unit not in ("bit", "word"):
        raise ValueError(f"rate unit {unit!r} is not allowed with the conditioned design; its fault count is not "
                         "binomial: use bit or word")
    return unit


def _unit_sizes(space, sampler) -> np.ndarray:
    """Units the rate counts per field: words (bursts, per-word rates) or bits."""
    return space.field_numel.numpy() if rate_unit(sampler) == "word" else space.field_n_bits


def part_sizes(space, sampler) -> tuple[int, int]:
    """(N_s, N_o): the units of the shared and of the own part."""
    sizes = _unit_sizes(space, sampler)
    parts = part_fields(space)
    return int(sizes[parts["shared"]].sum()), int(sizes[parts["own"]].sum())


def distinct_uniform(key: np.uint64, count: int, total: int) -> np.ndarray:
    """``count`` distinct integers uniform in [0, total), without replacement: the first ``count``
    distinct values of floor(u * total) along the stream of ``key`` (a prefix of the stream, so the
    result does not depend on how many uniforms a round draws)."""
    if count > total:
        raise ValueError(f"cannot draw {count} distinct faults from a part of {total} units")
    if count == 0:
        return np.empty(0, dtype=np.int64)
    draws = count + 8 + count // 4
    while True:
        u = stream_uniforms(np.array([key], dtype=np.uint64), np.array([draws]))
        values = np.minimum(np.floor(u * total).astype(np.int64), total - 1)
        _, first = np.unique(values, return_index=True)
        if first.size >= count:
            return values[np.sort(first)[:count]]
        draws *= 2


def _key(part: str, seed: int, k: int, j: int, trial: int) -> np.uint64:
    name = np.array([hash64(f"conditioned\x1f{part}\x1f{k}\x1f{j}")], dtype=np.uint64)
    return field_keys(name, seed, trial)[0]


def exact_positions(space, sampler, k: int, j: int, seed: int, trial: int) -> tuple[np.ndarray, np.ndarray]:
    """(field index, unit position within the field) of the k shared and j own faults, by field."""
    sizes = _unit_sizes(space, sampler)
    fields, positions = [], []
    for part, count in zip(_PARTS, (k, j)):
        idx = part_fields(space)[part]
        offsets = np.cumsum(sizes[idx])
        units = distinct_uniform(_key(part, seed, k, j, trial), count, int(offsets[-1]) if idx.size else 0)
        which = np.searchsorted(offsets, units, side="right")
        fields.append(idx[which])
        positions.append(units - (offsets[which] - sizes[idx][which]))
    fid, pos = np.concatenate(fields), np.concatenate(positions)
    order = np.lexsort((pos, fid))
    return fid[order], pos[order]


def exact_columns(space, sampler, k: int, j: int, seed: int, trial: int) -> tuple:
    """The sampler's columns (field, element, bit, stuck value) of map (k, j, trial)."""
    fid, pos = exact_positions(space, sampler, k, j, seed, trial)
    key = _key("value", seed, k, j, trial)
    if isinstance(sampler, Bursts):
        widths = space.field_bits.numpy()[fid]
        start = np.floor(stream_uniforms(np.array([key]), np.array([fid.size])) * (widths - sampler.length + 1))
        span = np.arange(sampler.length, dtype=np.int64)
        return (np.repeat(fid, sampler.length), np.repeat(pos, sampler.length),
                (start.astype(np.int64)[:, None] + span).reshape(-1), None)
    if rate_unit(sampler) == "word":  # a hit word gets one uniformly drawn bit
        u = stream_uniforms(np.array([_key("bit", seed, k, j, trial)]), np.array([fid.size]))
        elements, bits = pos, np.floor(u * space.field_bits.numpy()[fid]).astype(np.int64)
    else:
        elements, bits = split_positions(space, fid, pos)
    values = None
    if isinstance(sampler, StuckBits):
        values = np.full(fid.size, 0 if sampler.value == "mix" else sampler.value, dtype=np.int64)
        if sampler.value == "mix":
            values = (stream_uniforms(np.array([key]), np.array([fid.size])) < 0.5).astype(np.int64)
    return fid, elements, bits, values


def exact_map(injector, k: int, j: int, seed: int, trial: int) -> FaultMap:
    """The fault map with exactly k shared and j own faults of (seed, k, j, trial), for ``injector``
    (its fault space and fault model). ``rate`` is None: the map is conditioned on its counts."""
    fmap = injector._as_map(exact_columns(injector.space, injector.sampler, k, j, seed, trial), None, seed, trial)
    return fmap
