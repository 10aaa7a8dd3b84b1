"""The width study (issue 25): does accuracy under stored-parameter faults depend on the width of a
model and on the rate unit only through the expected number of integer/sign-bit flips per conv
output channel?

The exposure of a run at a rate is

    x = sum over conv weight tensors of E[faulty bits in it] x (integer+sign bits / word bits)
        / sum over conv weight tensors of their output channels

E[faulty bits] is the rate unit's own count (faults/units.py: per bit numel x word_bits x rate, per
word numel x rate, toolbox floor(numel x word_bits x rate)); every faulty bit is a uniformly drawn bit
of its word, so the share in the integer and sign bits is (word_bits - frac_bits) / word_bits.
Only fixed-point formats have integer bits. A conv weight is a `weight` tensor of 3 to 5 axes; its
first axis counts the output channels. The back-of-envelope model behind it: such a flip makes one
weight huge, and the channel it feeds is lost (clipped to 0 by the bound, or zeroed by the ReLU).

Pure functions of logged data (fault_space.json, the run's curve and tags), as select.py.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from ..faults.units import RATE_UNITS
from .runs import JobRun, rate_unit


def conv_weights(fault_space: dict) -> list[dict]:
    """The conv weight tensors of a logged fault space (they need the shape, logged since issue 25)."""
    tensors = fault_space.get("tensors", [])
    if tensors and "shape" not in tensors[0]:
        raise ValueError("the run's fault_space.json has no tensor shapes (runs from before the width study "
                         "log none); rerun the job to get them")
    return [t for t in tensors if t["kind"] == "weight" and 3 <= len(t["shape"]) <= 5]


def integer_bits(fault_space: dict) -> int:
    if fault_space.get("format") != "fixed":
        raise ValueError(f"format={fault_space.get('format')!r} has no integer bits; the exposure is defined for "
                         "fixed point (faults.fmt=fixed) only")
    return int(fault_space["word_bits"]) - int(fault_space["frac_bits"])


def channel_exposure(fault_space: dict, unit: str, rate: float) -> float:
    """Expected integer/sign-bit flips in conv weights per conv output channel, at ``rate`` in ``unit``."""
    convs = conv_weights(fault_space)
    if not convs:
        raise ValueError("the fault space holds no conv weight (targets must include `weight` of conv layers)")
    expected = RATE_UNITS[unit].expected_faults
    share = integer_bits(fault_space) / int(fault_space["word_bits"])
    flips = sum(expected(t["elements"], t["word_bits"], rate) for t in convs) * share
    return flips / sum(t["shape"][0] for t in convs)


@dataclass(frozen=True)
class WidthPoint:
    """One (run, rate): its exposure and its accuracy, absolute and as a fraction of clean."""
    model: str
    width: float
    protection: str
    unit: str
    rate: float
    exposure: float
    clean: float
    mean: float
    ci_low: float
    ci_high: float
    epochs: int = 0  # the baseline's training epochs: two trainings of one width are two curves

    @property
    def retained(self) -> tuple[float, float, float]:
        return self.mean / self.clean, self.ci_low / self.clean, self.ci_high / self.clean


def width_points(job: JobRun, fault_space: dict) -> list[WidthPoint]:
    unit = rate_unit({"rate_unit": fault_space.get("rate_unit", "bit"), "fault_model": job.fault_model})[0]
    width, clean = float(job.params.get("model.width", "nan")), float(job.metrics.get("clean_accuracy", math.nan))
    epochs = int(job.params.get("train.epochs", 0))
    return [WidthPoint(job.model, width, job.protection, unit, rate, channel_exposure(fault_space, unit, rate), clean,
                       s["mean"], s.get("ci_low", math.nan), s.get("ci_high", math.nan), epochs)
            for rate, s in sorted(job.curve.items()) if "mean" in s]


def curves(points: list[WidthPoint]) -> dict[tuple, list[WidthPoint]]:
    """{(protection, width, epochs, unit): points by exposure}."""
    out: dict[tuple, list[WidthPoint]] = defaultdict(list)
    for p in points:
        out[(p.protection, p.width, p.epochs, p.unit)].append(p)
    return {k: sorted(v, key=lambda p: p.exposure) for k, v in sorted(out.items())}


def retained_at(curve: list[WidthPoint], exposure: float) -> float | None:
    """The curve's retained accuracy at ``exposure`` by linear interpolation in log exposure; None
    outside the exposures it measured (no extrapolation)."""
    xs = np.log10([p.exposure for p in curve])
    x = math.log10(exposure)
    if not curve or x < xs[0] - 1e-12 or x > xs[-1] + 1e-12:
        return None
    return float(np.interp(x, xs, [p.mean / p.clean for p in curve]))


@dataclass(frozen=True)
class Prediction:
    """A target point next to what the other widths' curves (same protection, either unit) give at
    its exposure: the range of their retained accuracies times the target's clean accuracy."""
    point: WidthPoint
    low: float | None
    high: float | None
    sources: int  # how many curves reached this exposure


def predict(points: list[WidthPoint], target_width: float) -> list[Prediction]:
    """Each point of ``target_width`` with the range the other widths predict for it."""
    by_curve = curves(points)
    out = []
    for (protection, width, _, _), curve in by_curve.items():
        if width != target_width:
            continue
        others = [c for (prot, w, _, _), c in by_curve.items() if prot == protection and w != target_width]
        for p in curve:
            found = [r for r in (retained_at(c, p.exposure) for c in others) if r is not None]
            out.append(Prediction(p, min(found) * p.clean if found else None, max(found) * p.clean if found else None,
                                  len(found)))
    return out
