"""The C++ CPU kernel of the hard bounded activations (fitact_pipeline/protect/cpu_kernel.py): it must
compute exactly what the eager forms compute, for every bound layout, thread count and in/out of
place, and the pipeline must fall back cleanly when it cannot be built."""
import copy
import logging
import math

import pytest
import torch

from fitact_pipeline.protect import cpu_kernel
from fitact_pipeline.protect import make_activation
from fitact_pipeline.faults import run_campaign
from fitact_pipeline.faults import FaultInjector
from fitact_pipeline.models import build_model
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model

NAN, INF = float("nan"), float("inf")
X_POINTS = [-2.0, -0.0, 0.0, 0.5, 1.0, 3.0, 1e30, NAN, INF, -INF]
BOUND_POINTS = [1.0, 0.0, -1.0, NAN, INF, -INF]


def _same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _reference(form: str, x: float, b: float) -> float:
    """DESIGN §2.2, §2.8 at one neuron. Clip: non-finite inputs are faults (0). Ranger's clamp, as
    torch.clamp computes min(max(x, 0), b): NaN stays NaN, +inf -> b, -inf -> 0; clamp_zero counts
    non-finite inputs as 0 first. The formula is taken literally, so a negative or NaN bound gives b."""
    if form == "clamp":
        r = x if (math.isnan(x) or x > 0) else 0.0
        return r if (math.isnan(r) or r < b) else b
    r = x if (math.isfinite(x) and x > 0) else 0.0
    if form == "clamp_zero":
        return b if (math.isnan(b) or not r < b) else r
    return r if r <= b else 0.0


def test_kernel_is_built_on_this_machine():
    # the project's install (ninja from pyproject, the system compiler) must give the fast path;
    # otherwise fused activations would silently run the slower compiled kernel
    assert cpu_kernel.load()


def test_the_reference_is_torch_clamp_for_ranger():
    # Ranger's clamp as its authors' code computes it: torch.clamp(x, 0, b) keeps NaN, sends +inf to b
    x = torch.tensor(X_POINTS)
    for b in (1.0, 0.5, 3.0):
        _same(torch.tensor([_reference("clamp", v, b) for v in X_POINTS]), torch.clamp(x, 0.0, b))


@pytest.mark.parametrize("form", sorted(cpu_kernel.FORMS))
@pytest.mark.parametrize("inplace", [False, True])
def test_values_at_special_points(form, inplace):
    x = torch.tensor(X_POINTS).repeat(5, 1)  # 5 samples: one group of four plus a single row
    for b in BOUND_POINTS:
        want = torch.tensor([_reference(form, v, b) for v in X_POINTS]).repeat(5, 1)
        xin = x.clone()
        out = cpu_kernel.bounded_relu(xin, torch.tensor(b), form=form, inplace=inplace)
        _same(out, want)
        assert (out.data_ptr() == xin.data_ptr()) == inplace
        if not inplace:
            _same(xin, x)  # the input is left alone


# (activation shape, granularity); sizes chosen to hit the kernel's edges: batches that are not a
# multiple of four, samples longer than one column block (32768 values), channel runs longer than a
# block, channel runs shorter than 16 values (spelled out per value) and of exactly 16, linear outputs
LAYOUTS = [((37, 3, 7, 9), "neuron"), ((37, 3, 7, 9), "channel"), ((37, 3, 7, 9), "layer"),
           ((5, 11), "neuron"), ((6, 2, 130, 130), "neuron"), ((6, 2, 130, 130), "channel"),
           ((3, 2, 200, 200), "channel"), ((2, 40000), "layer"), ((9, 5, 2, 3), "channel"),
           ((6, 4, 4, 4), "channel")]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape,granularity", LAYOUTS)
def test_fused_modules_match_eager(shape, granularity, threads):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * 3
    flat = x.view(-1)
    flat[::17], flat[5::23], flat[7::29] = NAN, INF, -INF
    sample = shape[1:]
    bound_shape = {"neuron": sample, "channel": (sample[0],) + (1,) * (len(sample) - 1), "layer": ()}[granularity]
    b = torch.rand(bound_shape, generator=gen) * 2
    if b.dim():  # bound faults: NaN, negative, +inf
        b.view(-1)[::5], b.view(-1)[1::7], b.view(-1)[2::11] = NAN, -1.0, INF
    assert cpu_kernel.usable(x, b)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, extra in (("ranger", {}), ("ranger", {"nonfinite": "zero"}), ("clipact", {}), ("fitact", {})):
            for inplace in (False, True):
                eager = make_activation(name, b, granularity, inplace=inplace, **extra)
                fused = make_activation(name, b, granularity, fused=True, inplace=inplace, **extra)
                with torch.inference_mode():
                    _same(fused(x.clone()), eager(x.clone()))
    finally:
        torch.set_num_threads(before)


def test_a_compiled_protected_model_traces_through_the_op():
    # users may torch.compile a whole protected model: the op has a shape-only (fake) version
    torch.manual_seed(4)
    b = torch.rand(4, 6, 6) * 2
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1),
                              make_activation("fitact", b, "neuron", fused=True, inplace=True))
    x = torch.randn(5, 3, 6, 6) * 3
    with torch.inference_mode():
        want = net(x)
        got = torch.compile(net, backend="aot_eager", fullgraph=True)(x)
    _same(got, want)


@pytest.mark.parametrize("sample,bound,runs", [
    ((3, 7, 9), (3, 7, 9), True), ((3, 7, 9), (3, 1, 1), True), ((3, 7, 9), (), True),
    ((3, 7, 9), (1,), True), ((11,), (11,), True), ((3, 7, 1), (3, 7, 1), True),
    ((3, 7, 9), (9,), False), ((3, 7, 9), (1, 7, 9), False), ((3, 7, 9), (3, 7, 9, 1), False),
    ((3, 7, 9), (7, 1), False)])
def test_bound_runs(sample, bound, runs):
    assert cpu_kernel.bound_runs(sample, bound) is runs


def test_usable_refuses_what_the_op_would_misread():
    x, b = torch.randn(4, 3, 5, 5), torch.rand(3, 5, 5)
    assert cpu_kernel.usable(x, b)
    assert not cpu_kernel.usable(x.double(), b.double())
    assert not cpu_kernel.usable(x.transpose(2, 3), b)  # not contiguous
    assert not cpu_kernel.usable(x, torch.rand(5))  # one bound per column
    assert not cpu_kernel.usable(torch.randn(5), torch.rand(5))  # no batch dimension


def test_fused_modules_fall_back_to_the_compiled_kernel(monkeypatch):
    monkeypatch.setattr(cpu_kernel, "_loaded", {"ok": False})  # as if the build had failed
    x = torch.randn(9, 3, 5, 5) * 3
    x[0, 0, 0, 0], x[1, 1, 1, 1] = NAN, INF
    b = torch.rand(3, 5, 5) * 2
    b[0, 0, 1], b[1, 2, 2] = -1.0, NAN
    assert not cpu_kernel.usable(x, b)
    x[2, 2, 2, 2] = -INF
    for name, extra in (("ranger", {}), ("ranger", {"nonfinite": "zero"}), ("clipact", {})):
        for inplace in (False, True):  # the compiled kernel of each form, out of place and in place
            eager = make_activation(name, b, "neuron", inplace=inplace, **extra)
            fused = make_activation(name, b, "neuron", fused=True, inplace=inplace, **extra)
            with torch.inference_mode():
                _same(fused(x.clone()), eager(x.clone()))
    with pytest.raises(RuntimeError, match="could not be built"):
        cpu_kernel.bounded_relu(x, b, form="clip", inplace=False)


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form='min' is not allowed; choose one of: clip, clamp, clamp_zero"):
        cpu_kernel.bounded_relu(torch.zeros(2, 3), torch.ones(()), form="min", inplace=False)


def test_a_failed_build_is_logged_once_and_reported(monkeypatch, caplog):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(cpu_kernel, "_loaded", {})
    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    with caplog.at_level(logging.WARNING, logger="fitact_pipeline.protect.cpu_kernel"):
        assert cpu_kernel.load() is False
        assert cpu_kernel.load() is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "(OSError: no C++ compiler found);" in warnings[0]


@pytest.mark.parametrize("fmt", ["fixed", "float32"])
def test_a_fault_campaign_gives_the_same_trials_fused_and_eager(fmt):
    # the pipeline's use: faults in weights and bounds (Q15.16 sign flips give negative bounds,
    # float32 flips NaN/inf ones), in-place sites, inference mode; fused must change no trial
    torch.manual_seed(5)
    base = fold_batchnorm(build_model("small_cnn", num_classes=10, in_channels=1, width=0.5).eval())
    images = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        labels = base(images).argmax(1)  # clean accuracy 1: every fault that matters shows
    profile = profile_activations(base, images[:32])
    for protection, granularity in (("fitact", "neuron"), ("ranger", "neuron"), ("ranger", "layer"),
                                    ("clipact", "channel")):
        trials = {}
        for fused in (False, True):
            model = protect_model(copy.deepcopy(base), protection, granularity, profile, fused=fused)
            result = run_campaign(model, FaultInjector(model, fmt=fmt), images, labels,
                                  rates=(1e-4, 1e-3, 1e-2), trials=6, seed=7, progress=False)
            trials[fused] = [(t["rate"], t["trial"], t["accuracy"], t["flips"]) for t in result.trials]
        assert trials[True] == trials[False], (protection, fmt)
