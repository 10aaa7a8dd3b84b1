"""The width study's exposure (report/width.py): expected integer/sign-bit flips in conv weights per
conv output channel, checked against the flips the samplers actually draw; the prediction of one
width from the others; the figure and the table of benchmarks/width_study.py."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from fitact_pipeline.faults import FaultInjector
from fitact_pipeline.faults.sampler import BitFlips
from fitact_pipeline.faults.units import RATE_UNITS, toolbox_counts
from fitact_pipeline.report.figures import width_collapse
from fitact_pipeline.report.runs import JobRun
from fitact_pipeline.report.width import (WidthPoint, channel_exposure, conv_weights, curves, predict, retained_at,
                                          width_points)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 4 * 4, 10)).eval()


def injector(unit, fmt="fixed"):
    return FaultInjector(net(), fmt=fmt, sampler=BitFlips(RATE_UNITS[unit]))


def test_the_logged_fault_space_carries_each_tensors_shape():
    model = net()
    shapes = {name: list(p.shape) for name, p in model.named_parameters()}
    space = FaultInjector(model).fault_space
    assert {t["name"]: t["shape"] for t in space["tensors"]} == shapes
    assert [t["name"] for t in conv_weights(space)] == ["0.weight", "2.weight"]


@pytest.mark.parametrize("unit", ["bit", "word", "toolbox"])
def test_exposure_is_the_mean_integer_flips_per_conv_channel_the_sampler_draws(unit, one_thread):
    inj = injector(unit)
    rate, trials = 3e-3, 300
    conv = [inj.space.field_id[n] for n in ("0.weight", "2.weight")]
    per_trial = []
    for t in range(trials):
        fmap = inj.sample(rate, seed=3, trial=t)
        in_conv = torch.isin(fmap.field_idx, torch.tensor(conv))
        per_trial.append(int((in_conv & (fmap.bits >= 16)).sum()) / (8 + 6))
    per_trial = np.array(per_trial)
    expected = channel_exposure(inj.fault_space, unit, rate)
    if unit == "toolbox":  # a fixed count per tensor: only the bits drawn (and a rare even-count loss) vary
        drawn = toolbox_counts(inj.space, rate)[conv].sum() / (8 + 6)
        assert expected == pytest.approx(drawn / 2)
    assert abs(per_trial.mean() - expected) < 4 * per_trial.std(ddof=1) / math.sqrt(trials) + 1e-3 * expected
    # per bit and per word differ by the word width, as the units define
    assert channel_exposure(inj.fault_space, "bit", rate) == pytest.approx(32 * channel_exposure(inj.fault_space,
                                                                                                 "word", rate))


def test_formats_without_integer_bits_and_runs_without_shapes_are_refused():
    space = injector("bit", fmt="float32").fault_space
    with pytest.raises(ValueError, match="format='float32'"):
        channel_exposure(space, "bit", 1e-5)
    old = dict(injector("bit").fault_space)
    old["tensors"] = [{k: v for k, v in t.items() if k != "shape"} for t in old["tensors"]]
    with pytest.raises(ValueError, match="no tensor shapes"):
        channel_exposure(old, "bit", 1e-5)


def point(width, unit, exposure, retained, protection="fitact", clean=0.8, epochs=0):
    acc = retained * clean
    return WidthPoint("vgg16", width, protection, unit, 1e-5, exposure, clean, acc, acc - 0.01, acc + 0.01, epochs)


def test_prediction_interpolates_the_other_widths_in_log_exposure_and_never_extrapolates():
    f = lambda x: 1.0 / (1.0 + x)  # noqa: E731  one curve for every width: the model holds
    pts = [point(w, u, x, f(x)) for w, u in ((0.25, "bit"), (0.5, "word")) for x in (0.01, 0.1, 1.0)]
    target = [point(1.0, "bit", x, f(x), clean=0.9) for x in (0.05, 0.5, 5.0)]
    preds = {round(p.point.exposure, 6): p for p in predict(pts + target, 1.0)}
    assert set(preds) == {0.05, 0.5, 5.0}
    assert preds[5.0].sources == 0 and preds[5.0].low is None  # beyond every other curve
    for x in (0.05, 0.5):
        p = preds[x]
        assert p.sources == 2 and p.low <= p.high
        # linear in log x between measured points: within the chord's error of f, scaled by 0.9
        assert p.low == pytest.approx(0.9 * f(x), abs=0.9 * 0.08)
    assert retained_at(curves(pts)[("fitact", 0.25, 0, "bit")], 0.1) == pytest.approx(f(0.1))
    # another protection never predicts this one
    other = [point(0.25, "bit", x, 0.0, protection="clipact_ft") for x in (0.01, 1.0)]
    assert predict(pts + target + other, 1.0)[0].low == preds[0.05].low


def test_width_points_read_the_runs_curve_unit_and_width():
    inj = injector("word")
    job = JobRun("r1", "vgg16", "cifar10_copy", "fitact", "memory", "fitact", ("vgg16",), {"model.width": "0.5", "train.epochs": "15"},
                 {"clean_accuracy": 0.8}, {1e-5: {"mean": 0.6, "ci_low": 0.58, "ci_high": 0.62}, 1e-4: {"mean": 0.3}})
    pts = width_points(job, inj.fault_space)
    assert [p.rate for p in pts] == [1e-5, 1e-4] and {p.unit for p in pts} == {"word"}
    assert (pts[0].width, pts[0].epochs) == (0.5, 15)
    assert pts[0].exposure == pytest.approx(channel_exposure(inj.fault_space, "word", 1e-5))
    assert pts[0].retained == pytest.approx((0.75, 0.725, 0.775))
    assert math.isnan(pts[1].ci_low)


def test_figure_and_table_show_every_point_and_the_prediction(benchmark_script):
    pts = [point(0.25, "bit", x, 1 / (1 + x)) for x in (0.01, 0.1, 1.0)]
    pts += [point(1.0, "word", 0.3, 0.5, clean=0.9), point(1.0, "word", 30.0, 0.1, clean=0.9)]
    fig, drawn = width_collapse(curves(pts), "t")
    assert drawn["fitact"]["w0.25 bit"]["exposure"] == [0.01, 0.1, 1.0]
    assert drawn["fitact"]["w1 word"]["retained"] == pytest.approx([50.0, 10.0])
    lines = benchmark_script("width_study").table(pts, 1.0)
    target_rows = [line for line in lines if line.startswith("| 1 |")]
    assert len(lines) == 2 + len(pts) and len(target_rows) == 2
    low = 0.9 * float(np.interp(np.log10(0.3), np.log10([0.1, 1.0]), [1 / 1.1, 1 / 2.0]))
    assert f"{100 * low:.1f}-{100 * low:.1f}" in target_rows[0]
    assert "out of range" in target_rows[1]
    # one width trained two ways: two curves, labelled by their epochs, both predicted
    twice = pts + [point(1.0, "word", 0.3, 0.6, clean=0.85, epochs=16)]
    _, drawn = width_collapse(curves(twice), "t")
    assert set(drawn["fitact"]) == {"w0.25 bit", "w1 e0 word", "w1 e16 word"}
    assert len(predict(twice, 1.0)) == 3
