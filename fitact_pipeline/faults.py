"""Bit-flip fault injection into the stored parameters of a model (DESIGN.md section 2.1).

    injector = FaultInjector(model, fmt="fixed", word_bits=32, frac_bits=16)   # quantises
    with injector.inject(rate=1e-5, seed=0, trial=3) as fmap:                    # flips in place
        acc = evaluate_accuracy(model, images, labels, batch_size=250)
    # here the model is bit for bit the clean (quantised) model again

Why it is built this way:
- A trial flips bits in place and restores by writing back the saved float32 values of the
  touched elements only: no model copy, cost proportional to the number of flips.
- The flip is vectorised: gather the touched elements of every tensor, encode them to words in
  one batch, XOR one combined mask per element (several bits of one word flip together), decode,
  scatter back. No Python loop per flip.
- Every bit flips independently with probability ``rate`` (a Bernoulli process over the bits),
  drawn by geometric gaps between flipped bits: per tensor t with N_t bits this is exactly
  K_t ~ Binomial(N_t, rate) distinct positions uniform without replacement, and the sum over
  tensors is K ~ Binomial(N, rate) uniform over the fault space. No count is ever rounded down.
- The positions in each tensor are a pure function of (seed, trial, tensor name): each tensor
  reads its own counter-based (splitmix64) stream keyed by a hash of the three. Models that share
  tensor names (the unprotected and the protected ones: protection only adds ``.bound`` tensors)
  therefore get the same faults in the shared tensors, and comparisons between protections are
  paired. The draws of all tensors are computed in a few numpy operations, with no generator
  object per tensor: drawing a map costs about as much as applying it.

Tensor-name patterns in ``include`` / ``exclude`` are shell globs (fnmatch, case-sensitive) on the
full dotted tensor name, e.g. ``"features.*"`` or ``"*.bound"``. See docs/faults.md.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .codecs import FORMATS, Codec, Float32Codec, Int8Codec, make_codec

TARGET_KINDS = ("weight", "bias", "bound", "batchnorm", "scale")
# Names the procedure that turns (seed, trial, tensor name) into a map. Logged with every fault
# space and part of every job key, so that results drawn by an earlier procedure are never reused
# as if they were this one's. Change it whenever the maps change.
SAMPLER = "splitmix64-geometric-gaps"
_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN_ATTRS = ("weight", "bias", "running_mean", "running_var")

__all__ = [
    "FORMATS",
    "TARGET_KINDS",
    "FaultInjector",
    "FaultMap",
    "SAMPLER",
    "count_correct",
    "evaluate_accuracy",
]


# ----------------------------------------------------------------------------------------------
# Fault map


class FaultMap:
    """The bits flipped by one trial.

    ``records`` is a list of ``(tensor_name, flat_index, bit)``; ``num_bits`` is N, the size of
    the fault space it was drawn from. Internally the map is kept as int64 tensors (building
    Python tuples for ten thousand flips would cost more than flipping them), and ``records`` is
    built on first access. For int8 scales the tensor name is ``"<weight name>:scale"`` and the
    flat index is the output channel.
    """

    def __init__(
        self,
        records: Iterable[tuple[str, int, int]] = (),
        num_bits: int = 0,
        *,
        rate: float | None = None,
        seed: int | None = None,
        trial: int | None = None,
        fmt: dict | None = None,
    ):
        names: list[str] = []
        ids: dict[str, int] = {}
        idx, el, bt = [], [], []
        for name, index, bit in records:
            if name not in ids:
                ids[name] = len(names)
                names.append(name)
            idx.append(ids[name])
            el.append(int(index))
            bt.append(int(bit))
        self._init(names, None, torch.tensor(idx, dtype=torch.int64),
                   torch.tensor(el, dtype=torch.int64), torch.tensor(bt, dtype=torch.int64),
                   num_bits, rate, seed, trial, fmt)

    def _init(self, names, field_bits, field_idx, elements, bits, num_bits, rate, seed, trial, fmt):
        self.names: list[str] = list(names)
        self.field_bits: list[int] | None = None if field_bits is None else list(field_bits)
        self.field_idx = field_idx
        self.elements = elements
        self.bits = bits
        self.num_bits = int(num_bits)
        self.rate = rate
        self.seed = seed
        self.trial = trial
        self.fmt = None if fmt is None else dict(fmt)
        self._records: list[tuple[str, int, int]] | None = None

    @classmethod
    def _from_tensors(cls, names, field_bits, field_idx, elements, bits, num_bits,
                      rate=None, seed=None, trial=None, fmt=None) -> "FaultMap":
        self = cls.__new__(cls)
        self._init(names, field_bits, field_idx, elements, bits, num_bits, rate, seed, trial, fmt)
        return self

    @property
    def records(self) -> list[tuple[str, int, int]]:
        if self._records is None:
            names = self.names
            self._records = [
                (names[i], e, b)
                for i, e, b in zip(self.field_idx.tolist(), self.elements.tolist(), self.bits.tolist())
            ]
        return self._records

    @property
    def num_flips(self) -> int:
        return int(self.elements.numel())

    def __len__(self) -> int:
        return self.num_flips

    @property
    def realised_ber(self) -> float:
        return self.num_flips / self.num_bits if self.num_bits else 0.0

    def summary(self) -> dict:
        """JSON-able per-trial statistics: flips, realised BER, flips per bit position (index =
        bit number, length = widest word in the map) and per tensor (every tensor of the map's
        fault space, zeros included)."""
        width = max(self.field_bits) if self.field_bits else int(self.bits.max()) + 1 if len(self) else 0
        per_bit = torch.bincount(self.bits, minlength=width).tolist() if width else []
        per_tensor = torch.bincount(self.field_idx, minlength=len(self.names)).tolist()
        return {
            "rate": self.rate,
            "seed": self.seed,
            "trial": self.trial,
            "num_bits": self.num_bits,
            "num_flips": self.num_flips,
            "realised_ber": self.realised_ber,
            "flips_per_bit": per_bit,
            "flips_per_tensor": dict(zip(self.names, per_tensor)),
        }

    def save(self, path: str | Path) -> None:
        """Write the map as JSON (exact integers; readable without torch)."""
        data = {
            "version": 1,
            "num_bits": self.num_bits,
            "rate": self.rate,
            "seed": self.seed,
            "trial": self.trial,
            "fmt": self.fmt,
            "names": self.names,
            "field_bits": self.field_bits,
            "field_idx": self.field_idx.tolist(),
            "elements": self.elements.tolist(),
            "bits": self.bits.tolist(),
        }
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "FaultMap":
        data = json.loads(Path(path).read_text())
        if data.get("version") != 1:
            raise ValueError(f"unsupported fault map version {data.get('version')!r} in {path}; expected 1")
        as_t = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
        return cls._from_tensors(
            data["names"], data["field_bits"], as_t(data["field_idx"]), as_t(data["elements"]),
            as_t(data["bits"]), data["num_bits"], data["rate"], data["seed"], data["trial"], data["fmt"],
        )

    def __repr__(self) -> str:
        return (f"FaultMap(num_flips={self.num_flips}, num_bits={self.num_bits}, rate={self.rate}, "
                f"seed={self.seed}, trial={self.trial})")


# ----------------------------------------------------------------------------------------------
# Fault-space selection


@dataclass
class _Slot:
    """One stored tensor of the model (a parameter or buffer), flattened view shared with it."""

    name: str
    kind: str
    flat: torch.Tensor
    elem_offset: int  # offset in the virtual concatenation of all slots (vectorised flips)
    scales: torch.Tensor | None = None  # int8: clean per-channel scales
    group: int = 1  # int8: consecutive elements sharing one scale


@dataclass
class _Field:
    """One part of the fault space: a slot's words, or (int8) a slot's scales."""

    name: str
    kind: str
    slot: int
    numel: int
    bits: int
    is_scale: bool = False


def _as_tuple(value, what: str) -> tuple[str, ...]:
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


def _tensor_kind(module: nn.Module, attr: str, is_param: bool) -> str | None:
    if attr == "bound" and is_param:
        return "bound"
    if isinstance(module, _CONV_LINEAR) and is_param and attr in ("weight", "bias"):
        return attr
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and attr in _BN_ATTRS:
        return "batchnorm"
    return None


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run the few small torch ops of flipping / restoring on one thread (sampling is numpy).

    Their work is tiny (tens of thousands of elements), but several CPU kernels (repeat_interleave,
    round, advanced indexing, ...) still enter a parallel region, and on a busy machine waking
    the thread pool costs milliseconds per op: measured 16 ms vs 1.3 ms per sample with 2 threads
    vs 1 on a shared 2-core box. The setting is restored before user code (the evaluation inside
    ``inject``) runs, so evaluation keeps its threads.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_rate(rate) -> float:
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ValueError(f"rate={rate!r} is not allowed; use a number in [0, 1]") from None
    if not 0.0 <= r <= 1.0:  # also rejects NaN
        raise ValueError(f"rate={rate!r} is not allowed; use a number in [0, 1]")
    return r


def _check_int(value, what: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what}={value!r} is not allowed; use an integer") from None


# ----------------------------------------------------------------------------------------------
# Sampling: a Bernoulli process over each tensor's bits, drawn by geometric gaps

# splitmix64 (Steele, Lea & Flood 2014): the stream of a 64-bit key is mix(key + j * GAMMA),
# j = 1, 2, ...; a counter-based generator, so any draw of any tensor is computed directly.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function (a bijection of uint64; arithmetic wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _hash64(text: str) -> int:
    # hashlib, not hash(): Python's str hash is salted per process, and the map must be a pure
    # function of (seed, trial, name) across processes and machines.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _field_keys(name_hashes: np.ndarray, seed: int, trial: int) -> np.ndarray:
    """The 64-bit stream key of every tensor for (seed, trial): a function of the three only."""
    return _mix64(name_hashes ^ np.uint64(_hash64(f"{seed}\x1f{trial}")))


def _bernoulli_positions(keys: np.ndarray, n_bits: np.ndarray, rate: float,
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
        z = _mix64(np.repeat(first, m) + np.arange(1, seg_start[-1] + m[-1] + 1, dtype=np.uint64) * _GAMMA)
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


# ----------------------------------------------------------------------------------------------
# Injector


class FaultInjector:
    """Selects the fault space of ``model``, stores it in ``fmt``, and injects bit flips.

    Construction rounds the fault-space tensors in place to the format (quantises for ``fixed``
    and ``int8``), so the clean model is the stored model. Build the injector after the model's
    values are final (after training and post-training). ``word_bits``/``frac_bits`` only apply
    to ``fixed``; the other formats have fixed widths (float32 32, float16/bfloat16 16, int8 8,
    its scales 32).
    """

    def __init__(
        self,
        model: nn.Module,
        fmt: str = "fixed",
        word_bits: int = 32,
        frac_bits: int = 16,
        targets: Sequence[str] = ("weight", "bias", "bound"),
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ):
        if fmt not in FORMATS:
            raise ValueError(f"unknown fault format {fmt!r}; choose one of: {', '.join(FORMATS)}")
        self.codec: Codec = make_codec(fmt, word_bits, frac_bits)
        self.fmt = fmt
        self.targets = _as_tuple(targets, "targets")
        for kind in self.targets:
            if kind not in TARGET_KINDS:
                raise ValueError(f"unknown target kind {kind!r}; choose from: {', '.join(TARGET_KINDS)}")
        if "scale" in self.targets and fmt != "int8":
            raise ValueError(f"target 'scale' needs fmt='int8' (got fmt={fmt!r}); scales exist only in int8")
        if "scale" in self.targets and len(set(self.targets) - {"scale"}) == 0:
            raise ValueError("targets=('scale',) selects no quantised tensor; add weight, bias, bound or batchnorm")
        self.include = _as_tuple(include, "include")
        self.exclude = _as_tuple(exclude, "exclude")
        self.model = model

        self._slots: list[_Slot] = []
        self._fields: list[_Field] = []
        self._select_and_quantize(model)
        if not self._fields:
            raise ValueError(
                f"empty fault space: no tensor matches targets={list(self.targets)}, "
                f"include={list(self.include)}, exclude={list(self.exclude)}"
            )
        self._field_id = {f.name: i for i, f in enumerate(self._fields)}
        self._field_bits = torch.tensor([f.bits for f in self._fields], dtype=torch.int64)
        self._field_bits_np = self._field_bits.numpy()
        self._field_bits_list = [f.bits for f in self._fields]
        self._field_names = [f.name for f in self._fields]
        widths = set(self._field_bits_list)
        only = widths.pop() if len(widths) == 1 else 0
        self._word_shift = only.bit_length() - 1 if only & (only - 1) == 0 and only else None
        self._codec_description = self.codec.describe()
        self._field_n_bits = np.array([f.numel * f.bits for f in self._fields], dtype=np.int64)
        self._field_name_hash = np.array([_hash64(f.name) for f in self._fields], dtype=np.uint64)
        self._field_numel = torch.tensor([f.numel for f in self._fields], dtype=torch.int64)
        # First bit of each field in the virtual concatenation of all fields' bits.
        self._field_bit_offset = torch.cumsum(self._field_numel * self._field_bits, 0) - self._field_numel * self._field_bits
        # Element offset of each field's slot in the virtual concatenation (word fields only).
        self._field_elem_offset = torch.tensor(
            [self._slots[f.slot].elem_offset for f in self._fields], dtype=torch.int64)
        self._slot_offsets = torch.tensor(
            [s.elem_offset for s in self._slots] + [self._total_elems], dtype=torch.int64)
        self._active = False

    # -- selection ---------------------------------------------------------------------------
    def _matches(self, name: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def _select_and_quantize(self, model: nn.Module) -> None:
        word_kinds = set(self.targets) - {"scale"}
        found: list[tuple[str, str, nn.Module, str, bool]] = []
        seen: set[int] = set()
        for mod_name, module in model.named_modules():
            for attr, tensor in list(module._parameters.items()) + list(module._buffers.items()):
                if tensor is None or id(tensor) in seen:
                    continue
                is_param = attr in module._parameters
                kind = _tensor_kind(module, attr, is_param)
                name = f"{mod_name}.{attr}" if mod_name else attr
                if kind in word_kinds and self._matches(name):
                    seen.add(id(tensor))
                    found.append((name, kind, module, attr, is_param))

        self._flat_store = self._gather_into_one_buffer(found) if self.fmt != "int8" else None
        offset = 0
        for name, kind, module, attr, is_param in found:
            store = module._parameters if is_param else module._buffers
            tensor = store[attr]
            if tensor.dtype != torch.float32:
                raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; the fault space must be float32")
            if not tensor.is_contiguous():
                tensor.data = tensor.data.contiguous()
            flat = tensor.detach().view(-1)
            if self._flat_store is not None:
                offset = flat.data_ptr() // 4 - self._flat_store.data_ptr() // 4  # its place in the store
            slot = _Slot(name, kind, flat, offset)
            with torch.no_grad():
                if self.fmt == "int8":
                    stored, scales = self.codec.quantize_tensor(flat.view(tensor.shape))
                    flat.copy_(stored.reshape(-1))
                    slot.scales = scales.cpu()  # the flip arithmetic runs on the CPU
                    slot.group = Int8Codec.element_channels(tensor.shape)
                else:
                    if self.fmt == "fixed" and not bool(torch.isfinite(flat).all()):
                        raise ValueError(f"tensor {name!r} holds inf or NaN; fixed point cannot store it")
                    flat.copy_(self.codec.quantize(flat))
            slot_id = len(self._slots)
            self._slots.append(slot)
            self._fields.append(_Field(name, kind, slot_id, flat.numel(), self.codec.word_bits))
            if self.fmt == "int8" and "scale" in self.targets:
                self._fields.append(_Field(f"{name}:scale", "scale", slot_id, slot.scales.numel(), 32, True))
            offset += flat.numel()
        self._total_elems = offset if self._flat_store is None else self._flat_store.numel()

    @staticmethod
    def _gather_into_one_buffer(found) -> torch.Tensor | None:
        """Move every fault-space tensor into one float32 buffer (each tensor becomes a view of it),
        so that a trial flips and restores all tensors with one gather and one scatter instead of
        a few small ops per tensor, which dominated the cost of a trial. Each view starts on a
        64-byte boundary, as a tensor of its own would, so kernels see the same memory layout and
        outputs stay bit-identical. Skipped (None) when the tensors are not all float32 on one device.
        """
        tensors = [(module._parameters if is_param else module._buffers)[attr] for _, _, module, attr, is_param in found]
        if not tensors or any(t.dtype != torch.float32 or t.device != tensors[0].device for t in tensors):
            return None
        sizes = [-(-t.numel() // 16) * 16 for t in tensors]  # 16 floats = 64 bytes
        store = torch.empty(sum(sizes) + 16, dtype=torch.float32, device=tensors[0].device)
        start = (-(store.data_ptr() // 4)) % 16  # first 64-byte boundary inside the buffer
        with torch.no_grad():
            for t, size in zip(tensors, sizes):
                view = store[start:start + t.numel()].view(t.shape)
                view.copy_(t)
                t.data = view
                start += size
        return store

    # -- description ---------------------------------------------------------------------------
    @property
    def num_bits(self) -> int:
        return sum(f.numel * f.bits for f in self._fields)

    @property
    def fault_space(self) -> dict:
        """JSON-able description of the fault space, for logging with every run."""
        tensors = [
            {"name": f.name, "kind": f.kind, "elements": f.numel, "word_bits": f.bits, "bits": f.numel * f.bits}
            for f in self._fields
        ]
        return {
            **self.codec.describe(),
            "sampler": SAMPLER,
            "targets": list(self.targets),
            "include": list(self.include),
            "exclude": list(self.exclude),
            "num_tensors": len(tensors),
            "total_elements": sum(t["elements"] for t in tensors),
            "total_bits": sum(t["bits"] for t in tensors),
            "tensors": tensors,
        }

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, rate: float, seed: int, trial: int = 0) -> FaultMap:
        """The fault map of (rate, seed, trial) without applying it."""
        rate = _check_rate(rate)
        seed = _check_int(seed, "seed")
        trial = _check_int(trial, "trial")
        return self._sample(rate, seed, trial)

    def _sample(self, rate: float, seed: int, trial: int) -> FaultMap:
        field_idx = elements = bits = np.empty(0, dtype=np.int64)
        if rate > 0.0:
            keys = _field_keys(self._field_name_hash, seed, trial)
            field_idx, pos = _bernoulli_positions(keys, self._field_n_bits, rate)
            if self._word_shift is not None:  # one power-of-two word width: shift, not divide
                elements, bits = pos >> self._word_shift, pos & ((1 << self._word_shift) - 1)
            else:
                elements, bits = np.divmod(pos, self._field_bits_np[field_idx])
        as_t = torch.from_numpy
        return FaultMap._from_tensors(
            self._field_names, self._field_bits_list, as_t(field_idx), as_t(elements), as_t(bits),
            self.num_bits, rate, seed, trial, self._codec_description)

    # -- trials --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def inject(self, rate: float, seed: int, trial: int = 0) -> Iterator[FaultMap]:
        """Flip the bits of trial ``trial`` in place; restore bit-exactly on exit (also on error)."""
        fmap = self.sample(rate, seed, trial)
        with self._applied(fmap.field_idx, fmap.elements, fmap.bits):
            yield fmap

    @contextlib.contextmanager
    def apply(self, fault_map: FaultMap) -> Iterator[FaultMap]:
        """Replay a fault map (e.g. one loaded from disk) exactly; restore on exit."""
        field_idx, elements, bits = self._validated(fault_map)
        with self._applied(field_idx, elements, bits):
            yield fault_map

    def _validated(self, fmap: FaultMap) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if fmap.fmt is not None and fmap.fmt != self.codec.describe():
            raise ValueError(f"fault map format {fmap.fmt} does not match the injector's {self.codec.describe()}")
        missing = [n for n in fmap.names if n not in self._field_id]
        if missing:
            raise ValueError(f"fault map names tensors not in this fault space: {missing[:5]}")
        if len(fmap) == 0:
            return (torch.empty(0, dtype=torch.int64),) * 3
        lut = torch.tensor([self._field_id[n] for n in fmap.names], dtype=torch.int64)
        fid = lut.index_select(0, fmap.field_idx)
        el, bt = fmap.elements, fmap.bits
        fbits = self._field_bits.index_select(0, fid)
        if bool((el < 0).any() | (el >= self._field_numel.index_select(0, fid)).any()):
            raise ValueError("fault map has a flat index outside its tensor")
        if bool((bt < 0).any() | (bt >= fbits).any()):
            raise ValueError("fault map has a bit position outside its word")
        # Sort by (field, element, bit) and reject repeats: a repeated bit would cancel itself
        # under XOR but add a carry under the summed masks used to combine bits.
        bit_offset = self._field_bit_offset
        key = bit_offset.index_select(0, fid) + el * fbits + bt
        key, order = torch.sort(key)
        if bool((key[1:] == key[:-1]).any()):
            raise ValueError("fault map repeats a bit position")
        return fid.index_select(0, order), el.index_select(0, order), bt.index_select(0, order)

    @contextlib.contextmanager
    def _applied(self, field_idx, elements, bits):
        if self._active:
            raise RuntimeError("a trial is already active on this injector; exit it first")
        self._active = True
        saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        try:
            with torch.no_grad(), _single_thread():
                if elements.numel():
                    if self.fmt == "int8":
                        self._flip_int8(field_idx, elements, bits, saved)
                    else:
                        self._flip_words(field_idx, elements, bits, saved)
            yield
        finally:
            with torch.no_grad(), _single_thread():
                # Reverse order so that, were a slot ever touched twice, the oldest values win.
                for flat, index, orig in reversed(saved):
                    if isinstance(flat, np.ndarray):
                        flat[index] = orig
                    else:
                        flat.index_copy_(0, index, orig)
            self._active = False

    def _flip_words(self, field_idx, elements, bits, saved) -> None:
        """One codec for every field: flip all tensors with one encode/XOR/decode."""
        # numpy for the index work: a few µs per op against ~10 µs for torch's dispatch, and the
        # cost of a trial is these few ops, not the flips.
        glob = self._field_elem_offset.numpy()[field_idx.numpy()] + elements.numpy()  # sorted: fields are in slot order
        first = np.ones(glob.size, dtype=bool)
        np.not_equal(glob[1:], glob[:-1], out=first[1:])
        uniq = glob[first]
        one_bit = np.left_shift(1, bits.numpy())
        masks_np = one_bit[first]
        more = np.flatnonzero(~first)  # further bits of an element (rare): OR them into its mask
        if more.size:
            np.bitwise_or.at(masks_np, np.cumsum(first)[more] - 1, one_bit[more])
        store = self._flat_store
        if store is not None and store.device.type == "cpu":  # numpy view of the one buffer
            store_np = store.numpy()
            orig = store_np[uniq]
            saved.append((store_np, uniq, orig))
            store_np[uniq] = self.codec.flip(orig, masks_np)
            return
        uniq_t = torch.from_numpy(uniq)
        if store is not None:  # one gather and one scatter on the store's device
            index = uniq_t.to(store.device)
            orig = store.index_select(0, index)
            saved.append((store, index, orig))
            new = torch.from_numpy(self.codec.flip(orig.cpu().numpy(), masks_np))
            store.index_copy_(0, index, new.to(index.device))
            return
        cuts = torch.searchsorted(uniq_t, self._slot_offsets).tolist()
        touched, origs = [], []
        for s, slot in enumerate(self._slots):
            a, b = cuts[s], cuts[s + 1]
            if a == b:
                continue
            local = (uniq_t[a:b] - slot.elem_offset).to(slot.flat.device)
            orig = slot.flat.index_select(0, local)
            saved.append((slot.flat, local, orig))
            touched.append((slot.flat, local, a, b))
            origs.append(orig.cpu())
        new = torch.from_numpy(self.codec.flip(torch.cat(origs).numpy(), masks_np))
        for flat, local, a, b in touched:
            flat.index_copy_(0, local, new[a:b].to(flat.device))

    def _flip_int8(self, field_idx, elements, bits, saved) -> None:
        """int8: q flips change one element; a scale flip changes its whole output channel."""
        f32 = Float32Codec()
        codec: Int8Codec = self.codec  # type: ignore[assignment]
        for s, slot in enumerate(self._slots):
            q_el = q_bt = c_el = c_bt = None
            for i, f in enumerate(self._fields):
                if f.slot != s:
                    continue
                sel = field_idx == i
                if not bool(sel.any()):
                    continue
                if f.is_scale:
                    c_el, c_bt = elements[sel], bits[sel]
                else:
                    q_el, q_bt = elements[sel], bits[sel]
            if q_el is None and c_el is None:
                continue
            scales = slot.scales
            parts = []
            if q_el is not None:
                q_u, q_inv = torch.unique_consecutive(q_el, return_inverse=True)
                q_mask = torch.zeros(q_u.numel(), dtype=torch.int64).index_add_(0, q_inv, 1 << q_bt)
                parts.append(q_u)
            if c_el is not None:
                c_u, c_inv = torch.unique_consecutive(c_el, return_inverse=True)
                c_mask = torch.zeros(c_u.numel(), dtype=torch.int64).index_add_(0, c_inv, 1 << c_bt)
                scales = scales.clone()
                scales[c_u] = f32.decode(f32.encode(scales[c_u]) ^ c_mask)
                span = torch.arange(slot.group, dtype=torch.int64)
                parts.append((c_u[:, None] * slot.group + span).reshape(-1))
            local = torch.cat(parts).unique() if len(parts) > 1 else parts[0]
            # Index tensors and the saved values follow the model's device; the arithmetic is CPU.
            local_dev = local.to(slot.flat.device)
            orig_dev = slot.flat.index_select(0, local_dev)
            saved.append((slot.flat, local_dev, orig_dev))
            orig = orig_dev.cpu()
            chan = local // slot.group
            words = codec.encode_q(orig, slot.scales[chan])
            if q_el is not None:
                mask = torch.zeros(local.numel(), dtype=torch.int64)
                mask[torch.searchsorted(local, q_u)] = q_mask
                words = words ^ mask
            slot.flat.index_copy_(0, local_dev, codec.decode_q(words, scales[chan]).to(slot.flat.device))

    def __repr__(self) -> str:
        return (f"FaultInjector(fmt={self.codec.describe()}, targets={list(self.targets)}, "
                f"tensors={len(self._fields)}, num_bits={self.num_bits})")


# ----------------------------------------------------------------------------------------------
# Evaluation under faults


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Correct predictions; a row with any non-finite logit counts as a miss (DESIGN 2.1)."""
    finite = torch.isfinite(logits).all(dim=1)
    pred = torch.nan_to_num(logits, nan=0.0).argmax(dim=1)
    return int(((pred == labels.to(pred.device)) & finite).sum().item())


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 250) -> float:
    """Top-1 accuracy in float32 (no autocast, no TF32: faulty values reach +-32768)."""
    if len(images) == 0:
        raise ValueError("evaluate_accuracy got no images; give at least one")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; use a positive integer")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = images.device
    was_training = model.training
    model.eval()
    correct = 0
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].to(device, torch.float32)
                y = labels[start:start + batch_size].to(device)
                correct += count_correct(model(x).float(), y)
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.train(was_training)
    return correct / len(images)

