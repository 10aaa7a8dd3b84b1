"""The ``activation`` fault model: transient bit flips in activation values (DESIGN.md §2.6).

At each chosen site (by default the output of every convolution and linear layer, where a datapath
fault appears, before the activation function) each bit of the site's output words, in the datapath
format, flips independently with probability ``rate``. Each (site, evaluation image) is a field of its
own with its own counter-based stream, keyed by (seed, trial, site name, image index): the faults of
an image do not depend on the batch it is evaluated in, every image and every trial gets faults of
its own, and trial i of every protection hits the same (image, site, element, bit) (site names are
shared across protections). Faults are therefore redrawn per (trial, site, image), not per forward
call: a second pass over the same images inside one trial repeats them (a campaign makes one pass
per trial). Per field the count is exactly Binomial(bits, rate) and the positions distinct and
uniform (the gap sampler of sampler.py). The weights are stored in ``faults.fmt`` by the fault
model's builder (fault_models.py), as under every fault model.

The evaluation tells the injector which images each batch holds (``begin_batch``: indices in the
evaluation pool; a pass it is not told about counts its images from 0); the map of a trial
accumulates over its passes and replays exactly.
"""
from __future__ import annotations

import contextlib
import fnmatch
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..layer_types import CONV_LINEAR
from .faultmap import FaultMap
from .flip import Faults, apply_words
from .formats import FORMATS
from .sampler import _GAMMA, bernoulli_positions, check_int, check_rate, field_keys, hash64, mix64


def select_sites(model: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Module]:
    """Modules whose outputs get faults: those matching a pattern, or every conv/linear layer."""
    if patterns:
        return {n: m for n, m in model.named_modules() if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    return {n: m for n, m in model.named_modules() if isinstance(m, CONV_LINEAR)}


class _Trial:
    """The faults of one trial, drawn pass by pass (or replayed from a map)."""

    def __init__(self, injector: "ActivationInjector", rate: float, seed: int, trial: int, replay: FaultMap | None):
        self.injector, self.rate, self.seed, self.trial, self.replay = injector, rate, seed, trial, replay
        self.columns: list[tuple] = []  # (site ids, images, elements, bits) per site pass
        self.bits = 0

    def hook(self, site: int):
        def apply(_module, _inputs, out: torch.Tensor):
            return self._faulty(site, out)
        return apply

    def _faulty(self, site: int, out: torch.Tensor) -> torch.Tensor:
        ids = self.injector.batch_ids
        if ids is None or len(ids) != out.shape[0]:  # a forward pass outside evaluate_accuracy
            ids = np.arange(out.shape[0], dtype=np.int64)
        codec = self.injector.codec
        flat = out.reshape(out.shape[0], -1)
        self.bits += flat.numel() * codec.word_bits
        rows, elements, bits = self._draw(site, ids, flat) if self.replay is None else self._recorded(site, ids)
        if rows.size == 0:
            return out
        self.columns.append((np.full(rows.size, site), ids[rows], elements, bits))
        key = rows * flat.shape[1] + elements  # several bits of one word: one mask
        uniq, first = np.unique(key, return_index=True)
        masks = np.zeros(uniq.size, dtype=np.int64)
        np.bitwise_or.at(masks, np.searchsorted(uniq, key), np.left_shift(1, bits))
        rows = torch.from_numpy(rows[first]).to(out.device)
        cols = torch.from_numpy(elements[first]).to(out.device)
        new, _ = apply_words(codec, flat[rows, cols].detach().float().cpu().numpy(), Faults(masks, None))
        flat = flat.clone() if flat.requires_grad else flat  # reshape gave a view of out, or a copy
        flat[rows, cols] = torch.from_numpy(new).to(flat.device, flat.dtype)
        return flat.view(out.shape)

    def _draw(self, site: int, ids: np.ndarray, flat: torch.Tensor):
        """(row in the batch, element, bit) of this pass's faults at ``site``."""
        injector = self.injector
        hashes = np.uint64(injector.site_hash[site]) ^ mix64(ids.astype(np.uint64) * _GAMMA + np.uint64(0x632BE59BD9B4E019))
        n_bits = np.full(ids.size, flat.shape[1] * injector.codec.word_bits, dtype=np.int64)
        field, pos = bernoulli_positions(field_keys(hashes, self.seed, self.trial), n_bits, self.rate)
        return field.astype(np.int64), *np.divmod(pos, injector.codec.word_bits)

    def _recorded(self, site: int, ids: np.ndarray):
        m = self.replay
        sel = (m.field_idx == site).numpy() & np.isin(m.images.numpy(), ids)
        images = m.images.numpy()[sel]
        rows = np.searchsorted(ids, images, sorter=np.argsort(ids, kind="stable"))
        rows = np.argsort(ids, kind="stable")[rows]
        return rows, m.elements.numpy()[sel], m.bits.numpy()[sel]

    # what the campaign reads of a trial's map: unknown until the passes ran, then the map's
    effective_flips = None

    def summary(self) -> dict:
        return self.fault_map().summary()

    @property
    def num_flips(self) -> int:
        return sum(c[0].size for c in self.columns)

    def fault_map(self) -> FaultMap:
        injector = self.injector
        cols = [np.concatenate(c) if c else np.empty(0, dtype=np.int64) for c in zip(*self.columns)] or \
            [np.empty(0, dtype=np.int64)] * 4
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
        fmap = FaultMap._from_tensors(injector.names, [injector.codec.word_bits] * len(injector.names),
                                      as_t(cols[0]), as_t(cols[2]), as_t(cols[3]), self.bits, self.rate, self.seed,
                                      self.trial, injector.codec.describe(), "activation", None, as_t(cols[1]))
        fmap.effective_flips = fmap.num_flips
        return fmap


class ActivationInjector:
    """Transient bit flips in the outputs of ``sites`` (module-name patterns; none = every conv and
    linear layer), in the datapath format ``fmt`` (a word format: float32, fixed, float16, bfloat16, fp8)."""

    per_pass = True
    fault_model = "activation"

    def __init__(self, model: nn.Module, sites: Sequence[str] = (), fmt: str = "float32", word_bits: int = 32,
                 frac_bits: int = 16):
        number_format = FORMATS[fmt]
        if number_format.family != "word":
            words = ", ".join(n for n, f in FORMATS.items() if f.family == "word")
            raise ValueError(f"activation faults need a word format ({words}), not {fmt!r}")
        self.codec = number_format.codec(word_bits, frac_bits)
        self.modules = select_sites(model, tuple(sites))
        if not self.modules:
            raise ValueError(f"activation fault sites {list(sites)} match no module of the model")
        self.names = list(self.modules)
        self.site_hash = [hash64(n) for n in self.names]
        self.model, self.sites, self.batch_ids = model, tuple(sites), None
        self.current: _Trial | None = None
        self.stored_format: dict | None = None  # the weights' format, when the fault model stored them

    def begin_batch(self, image_ids) -> None:
        """The evaluation is about to run these images (their indices in the evaluation pool):
        their faults come next."""
        self.batch_ids = np.asarray(image_ids, dtype=np.int64)

    @property
    def fault_space(self) -> dict:
        return {"fault_model": "activation", **self.codec.describe(), "rate_unit": "bit",
                **({"weights_format": self.stored_format} if self.stored_format else {}),
                "sites": list(self.sites), "num_tensors": len(self.names),
                "tensors": [{"name": n, "kind": "activation"} for n in self.names],
                "total_elements": None, "total_bits": None}

    def inject(self, rate: float, seed: int, trial: int = 0):
        """Faults of trial ``trial`` for every image evaluated inside the ``with`` block (keyed by
        image index: the same image twice gets the same faults); the yielded trial's ``fault_map()``
        holds every fault of its passes."""
        return self._hooked(_Trial(self, check_rate(rate), check_int(seed, "seed"), check_int(trial, "trial"), None))

    def apply(self, fault_map: FaultMap):
        """Replay a trial's activation faults exactly (same evaluation images and order)."""
        if fault_map.images is None or fault_map.names != self.names:
            raise ValueError("fault map is not an activation fault map of these sites")
        return self._hooked(_Trial(self, fault_map.rate, fault_map.seed, fault_map.trial, fault_map))

    @contextlib.contextmanager
    def _hooked(self, trial: _Trial) -> Iterator[_Trial]:
        if self.current is not None:
            raise RuntimeError("a trial is already active on this injector; exit it first")
        self.current, self.batch_ids = trial, None
        handles = [m.register_forward_hook(trial.hook(i)) for i, m in enumerate(self.modules.values())]
        try:
            yield trial
        finally:
            for h in handles:
                h.remove()
            self.current = None
