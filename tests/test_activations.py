"""Values, shapes and failure modes of the bounded activation family (DESIGN.md §2.2)."""
import math

import pytest
import torch

from fitact_pipeline.protect import cpu_kernel
from fitact_pipeline.protect import make_activation, reduce_profile
from fitact_pipeline.protect.protections.clipact import ClipActReLU
from fitact_pipeline.protect.protections.fitact import FitReLU, set_fitrelu_hard
from fitact_pipeline.protect.protections.gbrelu import GBReLU
from fitact_pipeline.protect.protections.ranger import RangerReLU

NAN, INF = float("nan"), float("inf")
X = torch.tensor([NAN, INF, -INF, -3.0, 0.0, 0.5, 2.0, 2.5, 1e30])


def _vals(m, x=X):
    with torch.no_grad():
        return m(x.clone()).tolist()


def test_ranger_clamps_as_torch_clamp_keeping_nan_and_sending_inf_to_the_bound():
    # Ranger's own clamp (DESIGN §2.8): NaN stays NaN, +inf -> b, -inf -> 0
    got = _vals(RangerReLU(2.0))
    assert math.isnan(got[0]) and got[1:] == [2.0, 0, 0, 0, 0.5, 2.0, 2.0, 2.0]
    _same_nan(RangerReLU(2.0)(X.clone()), torch.clamp(X, 0.0, 2.0))
    _same_nan(RangerReLU(2.0, inplace=True)(X.clone()), torch.clamp(X, 0.0, 2.0))


def test_ranger_nonfinite_zero_counts_non_finite_inputs_as_zero():
    assert _vals(RangerReLU(2.0, nonfinite="zero")) == [0, 0, 0, 0, 0, 0.5, 2.0, 2.0, 2.0]


def test_ranger_clamps_under_autograd_and_on_other_kinds():
    x = X.clone().requires_grad_(True)  # the out-of-place path (torch.minimum)
    _same_nan(RangerReLU(2.0)(x).detach(), torch.clamp(X, 0.0, 2.0))
    # a kind with a lower bound a: min(max(g(x), a), b), NaN kept, +inf -> b, -inf -> a
    leaky = dict(activation=torch.nn.LeakyReLU(0.5), lower=torch.tensor(-1.0))
    x = torch.tensor([NAN, INF, -INF, 3.0, -0.5])
    y = make_activation("ranger", torch.tensor(2.0), "layer", **leaky)(x)
    assert math.isnan(y[0]) and y[1:].tolist() == [2.0, -1.0, 2.0, -0.25]
    zero = make_activation("ranger", torch.tensor(2.0), "layer", **leaky, nonfinite="zero")
    assert zero(x).tolist() == [0.0, 0.0, 0.0, 2.0, -0.25]
    with pytest.raises(ValueError, match="nonfinite='nan' is not allowed; choose one of: clamp, zero"):
        RangerReLU(2.0, nonfinite="nan")


def _same_nan(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("cls", [ClipActReLU, GBReLU])
def test_clipact_zeroes_above_bound(cls):
    assert _vals(cls(2.0)) == [0, 0, 0, 0, 0, 0.5, 2.0, 0, 0]


def test_fitrelu_hard_is_naive_form():
    assert _vals(FitReLU(2.0, "layer", hard=True)) == [0, 0, 0, 0, 0, 0.5, 2.0, 0, 0]


def test_fitrelu_smooth_values_and_gradient():
    m = FitReLU(2.0, "layer", k=20.0)
    y = m(X)
    expect = [0, 0, 0, 0, 0, 0.5 / (1 + math.exp(-20 * 1.5)), 1.0, 2.5 / (1 + math.exp(20 * 0.5)), 0]
    assert torch.allclose(y, torch.tensor(expect), atol=1e-6)
    assert torch.isfinite(y).all()
    y.sum().backward()
    # the bound gets a finite, non-zero gradient (it is what post-training trains), also with NaN/inf around
    assert m.bound.grad is not None and torch.isfinite(m.bound.grad) and m.bound.grad.item() > 0


def test_only_fitact_bound_trains_and_named_bound():
    for cls in (RangerReLU, ClipActReLU, GBReLU):
        m = cls(1.0)
        assert [n for n, _ in m.named_parameters()] == ["bound"] and not m.bound.requires_grad
    assert FitReLU(1.0).bound.requires_grad


@pytest.mark.parametrize("name", ["ranger", "clipact", "gbrelu", "fitact"])
def test_neuron_and_channel_bounds_broadcast(name):
    # a (C,H,W) neuron bound: each neuron is cut at its own value
    bound = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # (2,1,2)
    m = make_activation(name, bound, "neuron")
    x = torch.full((3, 2, 1, 2), 2.5)
    y = m(x)
    above = torch.tensor([[[True, True]], [[False, False]]]).expand(3, 2, 1, 2)
    clipped = 2.5 if False else (bound.expand(3, 2, 1, 2) if name == "ranger" else torch.zeros(3, 2, 1, 2))
    assert torch.equal(y[above], clipped[above])
    assert torch.all(y[~above] == 2.5)


@pytest.mark.parametrize("inplace", [False, True])
def test_fused_kernel_matches_eager(inplace):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 3
    x[0, 0, 0, 0], x[1, 1, 1, 1], x[2, 2, 2, 2] = NAN, INF, -INF
    b = torch.rand(3, 5, 5) * 2
    for name, extra in (("clipact", {}), ("ranger", {}), ("ranger", {"nonfinite": "zero"}), ("fitact", {})):
        eager = make_activation(name, b, "neuron", inplace=inplace, **extra)
        fused = make_activation(name, b, "neuron", fused=True, inplace=inplace, **extra)
        with torch.no_grad():
            fused_in = x.clone()
            out = fused(fused_in)
            _same_nan(eager(x.clone()), out)  # Ranger's clamp keeps the NaN
            # in place like the nn.ReLU it replaces: the result is written into the input
            assert (out.data_ptr() == fused_in.data_ptr()) == inplace, name
            if inplace:
                _same_nan(fused_in, out)


@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_kernel_matches_eager_at_any_thread_count(threads, monkeypatch):
    # the torch.compile'd kernel (CUDA, and CPU when the C++ op cannot be built; the C++ op has
    # its own tests in test_cpu_kernel.py) reads the thread count at run time (inductor's
    # dynamic_threads); every thread's share of the batch, and the vector tail of an odd-sized
    # map, must match eager
    monkeypatch.setattr(cpu_kernel, "usable", lambda x, bound: False)
    torch.manual_seed(1)
    x = torch.randn(37, 3, 7, 9) * 3
    x[5, 1, 2, 3], x[20, 2, 6, 8], x[36, 0, 0, 0] = NAN, INF, -INF
    b = torch.rand(3, 7, 9) * 2
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, extra in (("clipact", {}), ("ranger", {}), ("ranger", {"nonfinite": "zero"}), ("fitact", {})):
            eager = make_activation(name, b, "neuron", inplace=True, **extra)
            fused = make_activation(name, b, "neuron", fused=True, inplace=True, **extra)
            with torch.no_grad():
                _same_nan(eager(x.clone()), fused(x.clone()))
    finally:
        torch.set_num_threads(before)


def test_reduce_profile_shapes_and_max():
    conv = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)
    lin = torch.tensor([3.0, 1.0, 2.0])
    assert reduce_profile(conv, "layer").shape == () and reduce_profile(conv, "layer") == 23
    ch = reduce_profile(conv, "channel")
    assert ch.shape == (2, 1, 1) and ch.flatten().tolist() == [11, 23]
    assert reduce_profile(conv, "neuron").shape == (2, 3, 4)
    assert reduce_profile(lin, "layer").shape == () and reduce_profile(lin, "channel").shape == (3,)
    assert reduce_profile(lin, "neuron").tolist() == [3, 1, 2]


def test_set_fitrelu_hard_roundtrip():
    net = torch.nn.Sequential(FitReLU(1.0, hard=True), ClipActReLU(1.0), FitReLU(1.0, hard=False))
    old = set_fitrelu_hard(net, False)
    assert old == {"0": True, "2": False} and not net[0].hard
    set_fitrelu_hard(net, old)
    assert net[0].hard and not net[2].hard


def test_bad_names():
    with pytest.raises(ValueError, match="unknown granularity 'pixel'"):
        ClipActReLU(1.0, "pixel")
    with pytest.raises(ValueError, match="unknown protection 'relu6'"):
        make_activation("relu6", 1.0)


def test_a_bad_ranger_nonfinite_is_refused_in_preflight():
    from fitact_pipeline.validate import ConfigError, preflight

    with pytest.raises(ConfigError, match=r"^protection.nonfinite='keep' is not allowed; choose one of: clamp, zero$"):
        preflight(["protection=ranger", "protection.nonfinite=keep"])
    preflight(["protection=ranger", "protection.nonfinite=zero"])
