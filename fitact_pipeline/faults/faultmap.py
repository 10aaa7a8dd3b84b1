"""A fault map: the faulty bits of one trial, saved as JSON and replayed exactly.

Columns (int64 tensors, one entry per faulty bit): the tensor (an index into ``names``), the flat
element index, the bit; for stuck-at faults the value the bit is stuck at (``values``); for
activation faults the evaluation image whose activation it hits (``images``; the tensor is then
the output of a site). Python tuples are built only on demand: for ten thousand faults they would
cost more than applying them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

VERSION = 2
_COLUMNS = ("field_idx", "elements", "bits", "values", "images")


def _tensor(values) -> torch.Tensor:
    return torch.as_tensor(list(values) if not isinstance(values, torch.Tensor) else values, dtype=torch.int64)


class FaultMap:
    """The faulty bits of one trial.

    ``FaultMap(records, num_bits)`` builds a map by hand from ``(tensor_name, flat_index, bit)``
    records (``(name, index, bit, value)`` with ``values=True`` for stuck-at faults). ``num_bits``
    is N, the size of the fault space it was drawn from. For int8 scales the tensor name is
    ``"<weight name>:scale"`` and the flat index is the output channel. ``effective_flips`` (set
    when the map is applied) counts the stored bits the faults changed: a stuck bit that already
    held its value changes nothing.
    """

    def __init__(self, records: Iterable[tuple] = (), num_bits: int = 0, *, rate: float | None = None,
                 seed: int | None = None, trial: int | None = None, fmt: dict | None = None,
                 fault_model: str = "memory", values: bool = False):
        names: list[str] = []
        ids: dict[str, int] = {}
        cols: list[list[int]] = [[], [], [], []]
        for record in records:
            name = record[0]
            ids.setdefault(name, len(ids))
            if ids[name] == len(names):
                names.append(name)
            for col, value in zip(cols, (ids[name], *record[1:])):
                col.append(int(value))
        self._init(names, None, *(_tensor(c) for c in cols[:3]), num_bits, rate, seed, trial, fmt,
                   fault_model, _tensor(cols[3]) if values else None)

    def _init(self, names, field_bits, field_idx, elements, bits, num_bits, rate, seed, trial, fmt,
              fault_model="memory", values=None, images=None):
        self.names: list[str] = list(names)
        self.field_bits: list[int] | None = None if field_bits is None else list(field_bits)
        self.field_idx, self.elements, self.bits, self.values, self.images = field_idx, elements, bits, values, images
        self.num_bits = int(num_bits)
        self.rate, self.seed, self.trial = rate, seed, trial
        self.fmt = None if fmt is None else dict(fmt)
        self.fault_model = fault_model
        self.effective_flips: int | None = None
        # the rate's unit count (bits; words for bursts) and the bits of one fault (the burst length)
        self.units, self.bits_per_fault = self.num_bits, 1
        self._records: list[tuple] | None = None

    @classmethod
    def _from_tensors(cls, names, field_bits, field_idx, elements, bits, num_bits, rate=None, seed=None,
                      trial=None, fmt=None, fault_model="memory", values=None, images=None) -> "FaultMap":
        self = cls.__new__(cls)
        self._init(names, field_bits, field_idx, elements, bits, num_bits, rate, seed, trial, fmt, fault_model,
                   values, images)
        return self

    @property
    def records(self) -> list[tuple]:
        """``(name, [image,] index, bit[, value])`` per faulty bit."""
        if self._records is None:
            cols = [self.field_idx.tolist()]
            cols += [self.images.tolist()] if self.images is not None else []
            cols += [self.elements.tolist(), self.bits.tolist()]
            cols += [self.values.tolist()] if self.values is not None else []
            self._records = [(self.names[row[0]], *row[1:]) for row in zip(*cols)]
        return self._records

    @property
    def num_flips(self) -> int:
        """Faulty bits drawn (for stuck-at, stuck bits: see ``effective_flips`` for the changes)."""
        return int(self.elements.numel())

    def __len__(self) -> int:
        return self.num_flips

    @property
    def realised_ber(self) -> float:
        """Faults per unit the rate counts (bits; words for bursts): the realised rate."""
        return self.num_flips / self.bits_per_fault / self.units if self.units else 0.0

    def summary(self) -> dict:
        """JSON-able per-trial statistics: faults, realised BER, faults per bit position (index =
        bit number, length = widest word in the map) and per tensor (every tensor of the map's
        fault space, zeros included), and the bits they changed."""
        width = max(self.field_bits) if self.field_bits else int(self.bits.max()) + 1 if len(self) else 0
        per_bit = torch.bincount(self.bits, minlength=width).tolist() if width else []
        per_tensor = torch.bincount(self.field_idx, minlength=len(self.names)).tolist()
        effective = self.num_flips if self.effective_flips is None and self.values is None else self.effective_flips
        return {"fault_model": self.fault_model, "rate": self.rate, "seed": self.seed, "trial": self.trial,
                "num_bits": self.num_bits, "num_flips": self.num_flips, "effective_flips": effective,
                "realised_ber": self.realised_ber, "flips_per_bit": per_bit,
                "flips_per_tensor": dict(zip(self.names, per_tensor))}

    def save(self, path: str | Path) -> None:
        """Write the map as JSON (exact integers; readable without torch)."""
        data = {"version": VERSION, "num_bits": self.num_bits, "rate": self.rate, "seed": self.seed,
                "trial": self.trial, "fmt": self.fmt, "fault_model": self.fault_model, "names": self.names,
                "field_bits": self.field_bits, "effective_flips": self.effective_flips, "units": self.units,
                "bits_per_fault": self.bits_per_fault}
        for col in _COLUMNS:
            tensor = getattr(self, col)
            data[col] = None if tensor is None else tensor.tolist()
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> "FaultMap":
        data = json.loads(Path(path).read_text())
        if data.get("version") not in (1, VERSION):
            raise ValueError(f"unsupported fault map version {data.get('version')!r} in {path}; expected 1 or 2")
        cols = {c: None if data.get(c) is None else _tensor(data[c]) for c in _COLUMNS}
        self = cls._from_tensors(data["names"], data["field_bits"], cols["field_idx"], cols["elements"],
                                 cols["bits"], data["num_bits"], data["rate"], data["seed"], data["trial"],
                                 data["fmt"], data.get("fault_model", "memory"), cols["values"], cols["images"])
        self.effective_flips = data.get("effective_flips")
        self.units, self.bits_per_fault = data.get("units", self.num_bits), data.get("bits_per_fault", 1)
        return self

    def __repr__(self) -> str:
        return (f"FaultMap({self.fault_model}, num_flips={self.num_flips}, num_bits={self.num_bits}, "
                f"rate={self.rate}, seed={self.seed}, trial={self.trial})")
