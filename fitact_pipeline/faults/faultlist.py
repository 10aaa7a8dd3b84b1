"""Fault lists: the fault maps of a campaign as one CSV file, one row per fault (docs/faults.md,
"Fault lists"), written from FaultMaps and read back for exact replay, here or by another tool.

Columns: ``rate`` (the fault rate the map was drawn at), ``trial`` (0 .. n-1 at each rate: trial t
of rate r is one fault map), ``tensor`` (the stored tensor's dotted name; ``<tensor>:scale`` for
the scales of a scaled format), ``index`` (flat element index; for scales, the block / channel),
``bit`` (0 = least significant bit of the stored word); the fault model adds ``value`` (stuck_at:
the value the bit is stuck at, 0 or 1) or ``length`` (burst: the upset covers bits bit ..
bit + length - 1). A trial whose map has no fault is one row with tensor, index and bit empty.

Replaying a list (``faults.list``, ``ReplayInjector``) evaluates map t of rate r as trial t of r in
place of the sampled one. The rows are checked against the model's fault space before the first
trial; the first that does not fit is refused with one line naming it.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..registry import ConfigError
from .faultmap import FaultMap

BASE_COLUMNS = ("rate", "trial", "tensor", "index", "bit")
#: the column each fault model adds to the base columns; the memory model adds none
MODEL_COLUMNS = {"memory": None, "stuck_at": "value", "burst": "length"}


class FaultListError(ConfigError):
    """A fault list that cannot be read or does not fit the model's fault space."""


def write_fault_list(maps: Iterable[FaultMap], path: str | Path) -> Path:
    """Write ``maps`` (of one memory-type fault model, each with its rate and trial) as a CSV list."""
    maps = list(maps)
    models = {m.fault_model for m in maps}
    if len(models) > 1 or not models <= set(MODEL_COLUMNS):
        raise FaultListError(f"a fault list holds maps of one of {list(MODEL_COLUMNS)}; got {sorted(models)}")
    extra = MODEL_COLUMNS[models.pop()] if maps else None
    unplaced = next((m for m in maps if m.rate is None or m.trial is None), None)
    if unplaced is not None:
        raise FaultListError(f"{unplaced!r} has no rate or trial; a fault list places every map at a (rate, trial)")
    path = Path(path)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(BASE_COLUMNS + ((extra,) if extra else ()))
        for fmap in maps:
            rows = _rows(fmap, extra)
            out.writerows(rows or [[repr(float(fmap.rate)), fmap.trial, "", "", ""] + ([""] if extra else [])])
    return path


def _rows(fmap: FaultMap, extra: str | None) -> list[list]:
    rate, trial = repr(float(fmap.rate)), int(fmap.trial)
    records = fmap.records
    if extra != "length":
        return [[rate, trial, *r] for r in records]
    rows: list[list] = []  # a burst: one run of adjacent bits per word, written as (first bit, length)
    for name, index, bit in records:
        last = rows[-1] if rows else None
        if last and last[2] == name and last[3] == index and last[4] + last[5] == bit:
            last[5] += 1
        else:
            rows.append([rate, trial, name, index, bit, 1])
    return rows


@dataclass
class Fault:
    """One row: where (tensor, index, bit) and the fault model's field (stuck value, burst length)."""

    row: int
    tensor: str
    index: int
    bit: int
    extra: int | None


@dataclass
class FaultList:
    """A read fault list: its fault model, and the faults of each (rate, trial) in file order."""

    path: Path
    fault_model: str
    trials: dict[tuple[float, int], list[Fault]]

    @property
    def rates(self) -> list[float]:
        return sorted({rate for rate, _ in self.trials})

    @property
    def trials_per_rate(self) -> int:
        return len(self.trials) // len(self.rates)

    def digest(self) -> str:
        """The list's content hash (for the job key)."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]


def read_fault_list(path: str | Path) -> FaultList:
    """Parse a CSV fault list; a malformed one raises FaultListError naming the first bad row."""
    path = Path(path)
    if not path.is_file():
        raise FaultListError(f"faults.list={str(path)!r} is not a file; give the path of a CSV fault list")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None) or []
        model = _model_of(header, path)
        trials: dict[tuple[float, int], list[Fault]] = {}
        for number, row in enumerate(reader, start=2):
            rate, trial, fault = _parse(row, header, number, path)
            faults = trials.setdefault((rate, trial), [])
            if fault is not None:
                faults.append(fault)
    _check_trials(trials, path)
    return FaultList(path, model, trials)


def _model_of(header: list[str], path: Path) -> str:
    for model, extra in MODEL_COLUMNS.items():
        if header == list(BASE_COLUMNS) + ([extra] if extra else []):
            return model
    allowed = " | ".join(",".join(BASE_COLUMNS + ((e,) if e else ())) for e in MODEL_COLUMNS.values())
    raise FaultListError(f"fault list {path} has header {','.join(header)!r}; expected one of: {allowed}")


def _parse(row: list[str], header: list[str], number: int, path: Path) -> tuple[float, int, Fault | None]:
    where = f"fault list {path} row {number}"
    if len(row) != len(header):
        raise FaultListError(f"{where} has {len(row)} fields; the header has {len(header)}")
    try:
        rate, trial = float(row[0]), int(row[1])
        if not row[2] and not any(row[3:]):
            return rate, trial, None  # a trial without faults
        numbers = [int(v) for v in row[3:]]
    except ValueError:
        raise FaultListError(f"{where}: {','.join(row)!r} is not rate,trial,tensor then integers") from None
    if not 0.0 <= rate <= 1.0 or trial < 0:
        raise FaultListError(f"{where}: rate {row[0]} / trial {row[1]} not allowed; rate in [0, 1], trial >= 0")
    return rate, trial, Fault(number, row[2], numbers[0], numbers[1], numbers[2] if len(numbers) > 2 else None)


def _check_trials(trials: dict, path: Path) -> None:
    """Every rate has trials 0 .. n-1, the same n (a campaign's numbering)."""
    if not trials:
        raise FaultListError(f"fault list {path} has no rows; expected at least one trial")
    per_rate: dict[float, list[int]] = {}
    for rate, trial in trials:
        per_rate.setdefault(rate, []).append(trial)
    n = len(next(iter(per_rate.values())))
    for rate, ids in per_rate.items():
        if sorted(ids) != list(range(n)):
            raise FaultListError(f"fault list {path}: rate {rate!r} has trials {sorted(ids)[:8]}; every rate needs "
                                 f"trials 0..{n - 1} (as the first rate listed)")


class ReplayInjector:
    """A memory-type injector whose trial t at rate r applies map t of rate r from a fault list.

    Every map is checked against the fault space and converted to the injector's own field
    numbering when the replay is built, so a mismatch is refused before the first trial.
    """

    per_pass = False

    def __init__(self, injector, faults: FaultList):
        if injector.fault_model != faults.fault_model:
            extra = MODEL_COLUMNS[faults.fault_model]
            raise FaultListError(f"fault list {faults.path} is a {faults.fault_model} list "
                                 f"({'column ' + extra if extra else 'no value/length column'}); set "
                                 f"faults.model={faults.fault_model} (got {injector.fault_model})")
        self.injector, self.faults = injector, faults
        self.maps = {key: self._map(key, rows) for key, rows in faults.trials.items()}

    def __getattr__(self, name):  # space, model, codec, num_bits, sampler, ...: the injector's
        if name in ("injector", "faults", "maps"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.injector, name)

    @property
    def fault_space(self) -> dict:
        return {**self.injector.fault_space, "fault_list": str(self.faults.path),
                "fault_list_sha256": self.faults.digest()}

    @contextlib.contextmanager
    def inject(self, rate: float, seed: int, trial: int = 0) -> Iterator[FaultMap]:
        with self.injector.inject_sampled(self.maps[(float(rate), int(trial))]) as fmap:
            yield fmap

    def sample_block(self, rate: float, seed: int, trials) -> list[FaultMap]:
        return [self.maps[(float(rate), int(t))] for t in trials]

    def _map(self, key: tuple[float, int], rows: list[Fault]) -> FaultMap:
        space, injector = self.injector.space, self.injector
        fid, el, bt, val = _columns(space, rows, self.faults)
        order = np.lexsort((bt, el, fid))  # the sampler's order: field, element, bit
        seen = np.stack([fid, el, bt])[:, order]
        repeat = np.flatnonzero((np.diff(seen, axis=1) == 0).all(axis=0))
        if repeat.size:
            raise FaultListError(f"fault list {self.faults.path} trial {key}: a bit is listed twice "
                                 f"({space.fields[seen[0, repeat[0]]].name} index {seen[1, repeat[0]]} bit "
                                 f"{seen[2, repeat[0]]}); a repeated bit would cancel itself")
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a[order]))  # noqa: E731
        fmap = FaultMap._from_tensors([f.name for f in space.fields], [f.bits for f in space.fields], as_t(fid),
                                      as_t(el), as_t(bt), space.num_bits, key[0], None, key[1],
                                      injector.codec.describe(), injector.fault_model,
                                      None if val is None else as_t(val))
        fmap.units, fmap.bits_per_fault = injector.sampler.units(space), injector.sampler.bits_per_fault
        return fmap


def _columns(space, rows: list[Fault], faults: FaultList):
    """(field ids, elements, bits, stuck values or None) of rows, each row checked; bursts expanded."""
    fid, el, bt, val = [], [], [], []
    for f in rows:
        where = f"fault list {faults.path} row {f.row}"
        i = space.field_id.get(f.tensor)
        if i is None:
            raise FaultListError(f"{where}: tensor {f.tensor!r} is not in the fault space ({len(space.fields)} "
                                 f"tensors: {', '.join(x.name for x in space.fields[:4])}, ...)")
        field = space.fields[i]
        if not 0 <= f.index < field.numel:
            raise FaultListError(f"{where}: index {f.index} is outside {f.tensor!r} ({field.numel} elements)")
        length = f.extra if faults.fault_model == "burst" else 1
        if length < 1 or not 0 <= f.bit or f.bit + length > field.bits:
            raise FaultListError(f"{where}: bit {f.bit}" + (f" length {length}" if length != 1 else "")
                                 + f" does not fit the {field.bits}-bit words of {f.tensor!r}")
        if faults.fault_model == "stuck_at" and f.extra not in (0, 1):
            raise FaultListError(f"{where}: stuck value {f.extra} is not allowed; use 0 or 1")
        for b in range(f.bit, f.bit + length):
            fid.append(i)
            el.append(f.index)
            bt.append(b)
            val.append(f.extra)
    arrays = [np.asarray(c, dtype=np.int64) for c in (fid, el, bt)]
    return (*arrays, np.asarray(val, dtype=np.int64) if faults.fault_model == "stuck_at" else None)


def replay(injector, faults):
    """The injector of a ``faults`` config: ``injector`` itself, or its replay of ``faults.list``."""
    path = faults.get("list")
    return injector if path is None else ReplayInjector(injector, read_fault_list(path))


def check_fault_list(faults, campaign) -> None:
    """A one-line ConfigError for a ``faults.list`` that cannot be replayed, before any work (whether
    its tensors fit the model is checked on the model's skeleton: structure.py)."""
    path = faults.get("list")
    if path is None:
        return
    if not isinstance(path, str) or not path:
        raise ConfigError(f"faults.list={path!r} is not allowed; give the path of a CSV fault list, or null")
    if faults.get("model") not in MODEL_COLUMNS:
        raise ConfigError(f"faults.list is not allowed with faults.model={faults.get('model')!r}; a fault list "
                          f"replays persistent faults: {', '.join(MODEL_COLUMNS)}")
    listed = read_fault_list(path)
    if listed.fault_model != faults["model"]:
        raise ConfigError(f"faults.list={path!r} is a {listed.fault_model} list; set faults.model="
                          f"{listed.fault_model} (got {faults['model']})")
    adaptive = (campaign.get("adaptive") or {}).get("enabled", False)
    if adaptive or campaign.get("images_per_trial") == "auto":
        raise ConfigError("faults.list replays the listed trials only: campaign.adaptive.enabled=true and "
                          "campaign.images_per_trial=auto (which draw further trials) are not allowed with it")
