"""A fault map: the bits one trial flips, as (tensor, flat index, bit) triples; saved as JSON and
replayed exactly (FaultInjector.apply)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch


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
