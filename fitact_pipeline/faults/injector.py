"""Bit-flip fault injection into the stored parameters of a model (DESIGN.md §2.1): the ``memory``
fault model.

    injector = FaultInjector(model, fmt="fixed", word_bits=32, frac_bits=16)   # stores (quantises)
    with injector.inject(rate=1e-5, seed=0, trial=3) as fmap:                    # flips in place
        acc = evaluate_accuracy(model, images, labels, batch_size=250)
    # here the model is bit for bit the clean (quantised) model again

The parts, one job each: space.py selects and quantises the fault space (layout.py lays it out in
one buffer), sampler.py draws the flipped bits, flip.py flips and restores per format family, and
faultmap.py records a map. The injector ties them together for one trial at a time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .faultmap import FaultMap
from .flip import FAMILIES, restore
from .sampler import BitFlips, Sampler, check_int, check_rate
from .space import FaultSpace


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run the few small torch ops of flipping / restoring on one thread (sampling is numpy).

    Their work is tiny, but several CPU kernels still enter a parallel region, and on a busy machine
    waking the thread pool costs more than the whole trial (docs/faults.md, "Cost"). The setting is
    restored before user code (the evaluation inside ``inject``) runs, so evaluation keeps its threads.
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


class FaultInjector:
    """Injects bit flips into the fault space of ``model`` stored in ``fmt``.

    Construction builds the fault space, which rounds its tensors in place to the format, so the
    clean model is the stored model: build the injector after the model's values are final.
    ``word_bits``/``frac_bits`` only apply to ``fixed``; the other formats have fixed widths
    (float32 32, float16/bfloat16 16, int8 and fp8 8, int4 4, their scales 32; mxfp8 8 and mxfp4 4, scales 8).
    """

    def __init__(self, model: nn.Module, fmt: str = "fixed", word_bits: int = 32, frac_bits: int = 16,
                 targets: Sequence[str] = ("weight", "bias", "bound"), include: Sequence[str] = (),
                 exclude: Sequence[str] = (), sampler: Sampler | None = None):
        self.space = FaultSpace.build(model, fmt, word_bits, frac_bits, targets, include, exclude)
        self.sampler = sampler or BitFlips()
        self.model = model
        self._active = False

    @property
    def codec(self):
        return self.space.codec

    @property
    def num_bits(self) -> int:
        return self.space.num_bits

    @property
    def fault_model(self) -> str:
        return self.sampler.fault_model

    @property
    def fault_space(self) -> dict:
        """JSON-able description of the fault space, for logging with every run."""
        return {**self.space.describe(), "fault_model": self.fault_model, "rate_unit": self.sampler.unit,
                **({"burst_length": self.sampler.length} if hasattr(self.sampler, "length") else {}),
                **({"stuck_value": self.sampler.value} if hasattr(self.sampler, "value") else {})}

    def sample(self, rate: float, seed: int, trial: int = 0) -> FaultMap:
        """The fault map of (rate, seed, trial) without applying it."""
        rate, seed, trial = check_rate(rate), check_int(seed, "seed"), check_int(trial, "trial")
        return self._as_map(self.sampler(self.space, rate, seed, trial), rate, seed, trial)

    def sample_block(self, rate: float, seed: int, trials: Sequence[int]) -> list[FaultMap]:
        """The maps of several trials (drawn together where the sampler can): ``sample`` of each."""
        rate, seed = check_rate(rate), check_int(seed, "seed")
        trials = [check_int(t, "trial") for t in trials]
        draws = self.sampler.draw_block(self.space, rate, seed, trials)
        return [self._as_map(columns, rate, seed, trial) for columns, trial in zip(draws, trials)]

    def _as_map(self, columns, rate: float, seed: int, trial: int) -> FaultMap:
        space = self.space
        field_idx, elements, bits, values = (np.asarray(c) if c is not None else None for c in columns)
        as_t = torch.from_numpy
        fmap = FaultMap._from_tensors([f.name for f in space.fields], [f.bits for f in space.fields],
                                      as_t(field_idx), as_t(elements), as_t(bits), space.num_bits, rate, seed, trial,
                                      self.codec.describe(), self.sampler.fault_model,
                                      None if values is None else as_t(values))
        fmap.units, fmap.bits_per_fault = self.sampler.units(space), self.sampler.bits_per_fault
        return fmap

    @contextlib.contextmanager
    def inject(self, rate: float, seed: int, trial: int = 0) -> Iterator[FaultMap]:
        """Flip the bits of trial ``trial`` in place; restore bit-exactly on exit (also on error)."""
        fmap = self.sample(rate, seed, trial)
        with self._applied(fmap):
            yield fmap

    @contextlib.contextmanager
    def inject_sampled(self, fault_map: FaultMap) -> Iterator[FaultMap]:
        """``inject`` of a map this injector drew (``sample``/``sample_block``): not validated again.
        Maps from anywhere else go through ``apply``."""
        with self._applied(fault_map):
            yield fault_map

    @contextlib.contextmanager
    def apply(self, fault_map: FaultMap) -> Iterator[FaultMap]:
        """Replay a fault map (e.g. one loaded from disk) exactly; restore on exit."""
        with self._applied(fault_map, self._validated(fault_map)):
            yield fault_map

    def _validated(self, fmap: FaultMap) -> tuple:
        if fmap.fmt is not None and fmap.fmt != self.codec.describe():
            raise ValueError(f"fault map format {fmap.fmt} does not match the injector's {self.codec.describe()}")
        missing = [n for n in fmap.names if n not in self.space.field_id]
        if missing:
            raise ValueError(f"fault map names tensors not in this fault space: {missing[:5]}")
        if fmap.images is not None:
            raise ValueError("an activation fault map hits activations, not stored parameters; replay it with "
                             "the activation fault model's injector")
        if fmap.values is not None and bool(((fmap.values != 0) & (fmap.values != 1)).any()):
            raise ValueError("fault map has a stuck value other than 0 or 1")
        if len(fmap) == 0:
            return (torch.empty(0, dtype=torch.int64),) * 3 + (None,)
        lut = torch.tensor([self.space.field_id[n] for n in fmap.names], dtype=torch.int64)
        fid = lut.index_select(0, fmap.field_idx)
        el, bt = fmap.elements, fmap.bits
        fbits = self.space.field_bits.index_select(0, fid)
        if bool((el < 0).any() | (el >= self.space.field_numel.index_select(0, fid)).any()):
            raise ValueError("fault map has a flat index outside its tensor")
        if bool((bt < 0).any() | (bt >= fbits).any()):
            raise ValueError("fault map has a bit position outside its word")
        # Sort by (field, element, bit) and reject repeats: a repeated bit would cancel itself
        # under XOR but add a carry under the summed masks used to combine bits.
        bit_offset = self.space.field_bit_offset
        key = bit_offset.index_select(0, fid) + el * fbits + bt
        key, order = torch.sort(key)
        if bool((key[1:] == key[:-1]).any()):
            raise ValueError("fault map repeats a bit position")
        values = None if fmap.values is None else fmap.values.index_select(0, order)
        return fid.index_select(0, order), el.index_select(0, order), bt.index_select(0, order), values

    @contextlib.contextmanager
    def _applied(self, fmap: FaultMap, columns=None):
        if self._active:
            raise RuntimeError("a trial is already active on this injector; exit it first")
        self._active = True
        field_idx, elements, bits, values = columns or (fmap.field_idx, fmap.elements, fmap.bits, fmap.values)
        saved: list = []
        try:
            with torch.no_grad(), _single_thread():
                fmap.effective_flips = FAMILIES[self.space.family].flip(
                    self.space, field_idx, elements, bits, values, saved) if elements.numel() else 0
            yield
        finally:
            with torch.no_grad(), _single_thread():
                restore(saved)
            self._active = False

    def __repr__(self) -> str:
        return (f"FaultInjector(fmt={self.codec.describe()}, targets={self.space.selection['targets']}, "
                f"tensors={len(self.space.fields)}, num_bits={self.num_bits})")
