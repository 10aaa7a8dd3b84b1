"""The bounded forms of every activation kind against their definition (docs/protections.md, "Bounded
forms of other activations"; DESIGN.md §2.8), at chosen points: NaN, ±inf, both sides of each bound,
inside; and what profiling, site discovery and the fault space make of them."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fitact_pipeline.faults import FaultInjector
from fitact_pipeline.protect import (ACTIVATIONS, activation_sites, make_activation, profile_ranges, protect_model,
                                     reduce_profile, split_activation_sites)
from fitact_pipeline.protect.posttrain import BoundPostTraining

NAN, INF = float("nan"), float("inf")
# the points: non-finite, far below, around the lower bound -0.5, inside, around the upper bound 2, far above
X = [NAN, INF, -INF, -1e30, -100.0, -3.0, -0.6, -0.4, 0.0, 0.3, 1.0, 1.9, 2.1, 2.5, 7.0, 1e30]
B, A, K = 2.0, -0.5, 20.0


def _phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _softplus(x):
    return x if x > 30 else math.log1p(math.exp(x))


# g written from the formulas, in double precision, independently of torch: the reference
REFERENCE = {
    "relu": (nn.ReLU(), lambda x: max(0.0, x)),
    "relu6": (nn.ReLU6(), lambda x: min(max(0.0, x), 6.0)),
    "leaky_relu": (nn.LeakyReLU(0.1), lambda x: x if x >= 0 else 0.1 * x),
    "prelu": (nn.PReLU(1, 0.25), lambda x: x if x >= 0 else 0.25 * x),
    "elu": (nn.ELU(1.0), lambda x: x if x > 0 else math.expm1(x)),
    "silu": (nn.SiLU(), lambda x: x / (1 + math.exp(-x)) if x > -700 else 0.0),
    "gelu": (nn.GELU(), lambda x: x * _phi(x)),
    "gelu_tanh": (nn.GELU(approximate="tanh"),
                  lambda x: 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
                  if abs(x) < 1e10 else max(0.0, x)),
    "hardswish": (nn.Hardswish(), lambda x: x * min(max(x + 3, 0.0), 6.0) / 6),
    "hardsigmoid": (nn.Hardsigmoid(), lambda x: min(max(x + 3, 0.0), 6.0) / 6),
    "mish": (nn.Mish(), lambda x: x * math.tanh(_softplus(x))),
}


def _sig(z):
    return 1 / (1 + math.exp(-z)) if z > -700 else 0.0


def _clamp(y, a, b):
    """min(max(y, a), b) as torch.clamp computes it: NaN stays NaN."""
    return y if math.isnan(y) else min(max(y, a), b)


def expected(protection, name, x, hard=True):
    module, g = REFERENCE[name]
    kind = ACTIVATIONS[name.replace("_tanh", "")]
    b = min(B, kind.cap) if kind.cap is not None else B
    a = A if kind.lower else -INF
    if not math.isfinite(x):
        if protection != "ranger":
            return 0.0
        # Ranger clamps g(x) as its authors' code does, g at +-inf and NaN as torch computes it. On a
        # map of X's size: torch's vectorised and scalar loops differ there (GELU(+inf): NaN vs inf)
        with torch.no_grad():
            return _clamp(float(module(torch.full((len(X),), x))[0]), a, b)
    y = g(x)
    if protection == "ranger":
        return _clamp(y, a, b)
    if protection in ("clipact", "gbrelu") or hard:
        return y if a <= y <= b else 0.0
    return y * _sig(K * (b - y)) * (_sig(K * (y - a)) if kind.lower else 1.0)


def _module(protection, name, hard=True, inplace=False):
    module, _ = REFERENCE[name]
    kind = ACTIVATIONS[name.replace("_tanh", "")]
    options = {"k": K, "hard": hard} if protection == "fitact" else {}
    site = {} if name == "relu" else {"activation": module, "lower": A if kind.lower else None}
    return make_activation(protection, B, "layer", inplace=inplace, **site, **options)


CASES = [(p, n, h, i) for n in REFERENCE for p, h, i in (
    ("ranger", True, False), ("clipact", True, False), ("gbrelu", True, False), ("fitact", True, False),
    ("fitact", False, False), ("ranger", True, True), ("clipact", True, True), ("fitact", True, True))]


@pytest.mark.parametrize("protection, name, hard, inplace", CASES, ids=lambda v: str(v))
def test_values_at_chosen_points_follow_the_definition(protection, name, hard, inplace):
    """Every form, also in place (where the replaced module was: then g runs into its input)."""
    m = _module(protection, name, hard, inplace)
    with torch.no_grad():
        got = m(torch.tensor(X)).tolist()
    want = [expected(protection, name, x, hard) for x in X]
    for x, g, w in zip(X, got, want):
        if math.isnan(w):  # only Ranger's clamp keeps a NaN (of x, or of g at an infinite x)
            assert protection == "ranger" and math.isnan(g), (protection, name, x, g)
            continue
        assert math.isfinite(g), (x, g)
        assert g == pytest.approx(w, rel=1e-5, abs=1e-6), (protection, name, hard, x, g, w)


def test_the_chosen_points_reach_every_case():
    """The points cross both bounds of every kind, so the cases above are not vacuous."""
    for name, (_, g) in REFERENCE.items():
        ys = [g(x) for x in X if math.isfinite(x)]
        kind = ACTIVATIONS[name.replace("_tanh", "")]
        assert any(y > min(B, kind.cap or B) for y in ys) or name == "hardsigmoid"
        assert any(0 < y < min(B, kind.cap or B) for y in ys)
        if kind.lower:
            assert any(y < A for y in ys) and any(A < y < 0 for y in ys)


def test_relu6_and_hardsigmoid_bounds_start_at_their_cap():
    assert make_activation("clipact", 10.0, activation=nn.ReLU6()).bound.item() == 6.0
    assert make_activation("ranger", 10.0, activation=nn.Hardsigmoid()).bound.item() == 1.0
    assert make_activation("clipact", 4.0, activation=nn.ReLU6()).bound.item() == 4.0


def test_a_lower_bounded_kind_needs_its_lower_bound():
    with pytest.raises(ValueError, match="needs a lower bound"):
        make_activation("clipact", 1.0, activation=nn.LeakyReLU())
    model = nn.Sequential(nn.Linear(3, 3), nn.ELU())
    maxima, _ = profile_ranges(model, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"site '1' \(elu\) needs a lower bound"):
        protect_model(model, "ranger", "layer", maxima)


def test_smooth_form_trains_both_bounds_even_with_non_finite_inputs():
    m = make_activation("fitact", torch.tensor(B), "layer", hard=False, activation=nn.LeakyReLU(0.1),
                        lower=torch.tensor(A))
    y = m(torch.tensor([NAN, INF, -INF, -5.4, 0.3, 2.05]))
    y.sum().backward()
    assert torch.isfinite(m.bound.grad) and m.bound.grad.item() > 0  # -5.4 -> -0.54, near a; 2.05 near b
    assert torch.isfinite(m.lower.grad) and m.lower.grad.item() != 0


@pytest.mark.parametrize("name", ["gelu", "leaky_relu", "relu6"])
def test_faulty_bounds_follow_the_formula(name):
    """A NaN bound zeroes everything under the clip forms; an inf bound still zeroes inf inputs."""
    module, _ = REFERENCE[name]
    lower = A if ACTIVATIONS[name].lower else None
    x = torch.tensor([INF, -INF, 1.0, -3.0])
    with torch.no_grad():
        assert make_activation("clipact", NAN, activation=module, lower=lower)(x).tolist() == [0, 0, 0, 0]
        out = make_activation("clipact", INF, activation=module, lower=lower)(x).tolist()
    assert out[0] == 0 and out[1] == 0 and out[2] == pytest.approx(REFERENCE[name][1](1.0), rel=1e-6)


def test_fused_flag_runs_the_eager_form_for_other_kinds():
    x = torch.randn(4, 3, 5, 5) * 4
    x[0, 0, 0, 0] = NAN
    b = torch.rand(3, 5, 5) * 2
    for protection in ("clipact", "ranger", "fitact"):
        eager = make_activation(protection, b, "neuron", activation=nn.SiLU())
        fused = make_activation(protection, b, "neuron", activation=nn.SiLU(), fused=True)
        with torch.no_grad():  # Ranger keeps the NaN
            torch.testing.assert_close(eager(x.clone()), fused(x.clone()), rtol=0, atol=0, equal_nan=True)


def test_token_maps_get_one_channel_bound_per_feature_and_minima_reduce_by_min():
    profile = torch.tensor([[1.0, 5.0, 2.0], [3.0, 0.5, 4.0]])  # (T=2 tokens, F=3 features)
    assert reduce_profile(profile, "channel").tolist() == [3.0, 5.0, 4.0]
    assert reduce_profile(profile, "channel", lower=True).tolist() == [1.0, 0.5, 2.0]
    assert reduce_profile(profile, "layer", lower=True).item() == 0.5
    conv = torch.arange(8.0).reshape(2, 2, 2) - 4
    assert reduce_profile(conv, "channel", lower=True).flatten().tolist() == [-4.0, 0.0]


class Mixed(nn.Module):
    """Functional calls with settings, a reused module, a gate, and a LeakyReLU."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.act = nn.SiLU()
        self.leaky = nn.LeakyReLU(0.2)

    def forward(self, x):
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x)) * torch.sigmoid(x)  # the gate is not a site
        x = F.gelu(x, approximate="tanh") + F.leaky_relu(x, 0.3) + self.leaky(x)
        return self.fc3(torch.softmax(x, dim=1))


def test_functional_calls_and_reused_modules_become_sites_with_their_settings():
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(5, 4) * 3
    with torch.no_grad():
        ref = model(x)
    split = split_activation_sites(model)
    assert activation_sites(split) == ["act", "act_1", "gelu_fn_1", "leaky_relu_fn_1", "leaky"]  # call order
    assert split.gelu_fn_1.approximate == "tanh" and split.leaky_relu_fn_1.negative_slope == 0.3
    maxima, minima = profile_ranges(model, x)
    assert set(maxima) == set(activation_sites(split)) and set(minima) == {"leaky", "leaky_relu_fn_1"}
    for protection, granularity in (("ranger", "layer"), ("clipact", "channel"), ("fitact", "neuron")):
        protected = protect_model(copy.deepcopy(model), protection, granularity, maxima, lower=minima)
        with torch.no_grad():  # bounds at the profiled extremes change nothing on the profiled data
            assert torch.allclose(protected(x), ref, atol=1e-6), protection
        assert protected.leaky.lower.shape == {"layer": (), "channel": (6,), "neuron": (6,)}[granularity]


@pytest.mark.parametrize("act, where", [(nn.Hardtanh(), "1 (Hardtanh)"), (nn.SELU(), "1 (SELU)")])
def test_activations_without_a_bounded_form_are_refused_naming_where_they_sit(act, where):
    model = nn.Sequential(nn.Linear(2, 2), act, nn.Linear(2, 2), nn.GELU())
    with pytest.raises(ValueError, match=rf"cannot bound: {where.replace('(', '[(]').replace(')', '[)]')}; "
                                         "bounded forms exist for: relu, relu6, leaky_relu"):
        activation_sites(model)


def test_functional_calls_without_a_bounded_form_are_refused():
    class Soft(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(2, 2))

        def forward(self, x):
            return F.softplus(self.block(x))

    with pytest.raises(ValueError, match=r"cannot bound: softplus \(functional call in 'the model'\)"):
        profile_ranges(Soft(), torch.randn(2, 2))


def test_timm_activation_classes_are_recognised():
    pytest.importorskip("timm")
    from timm.layers.activations import GELUTanh, QuickGELU, Swish

    model = nn.Sequential(nn.Linear(3, 3), GELUTanh(), nn.Linear(3, 3), Swish())
    sites = activation_sites(model)
    assert sites == ["1", "3"]
    maxima, minima = profile_ranges(model, torch.randn(4, 3))
    protected = protect_model(model, "clipact", "layer", maxima, lower=minima)
    assert protected[1].kind == "gelu" and protected[1].settings == {"approximate": "tanh"}
    assert protected[3].kind == "silu"
    with pytest.raises(ValueError, match=r"cannot bound: 1 \(QuickGELU\)"):
        activation_sites(nn.Sequential(nn.Linear(2, 2), QuickGELU()))


def test_prelu_keeps_its_slope_name_and_both_bounds_are_in_the_fault_space():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.PReLU(2, 0.2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).eval()
    x = torch.randn(6, 1, 6, 6) * 4
    maxima, minima = profile_ranges(model, x)
    protected = protect_model(model, "fitact", "neuron", maxima, lower=minima)
    names = dict(protected.named_parameters())
    assert {"1.weight", "1.bound", "1.lower"} <= set(names)
    assert names["1.bound"].shape == names["1.lower"].shape == (2, 4, 4) and (names["1.lower"] < 0).any()
    tensors = {f["name"] for f in FaultInjector(protected).fault_space["tensors"]}
    assert tensors == {"0.weight", "0.bias", "1.bound", "1.lower", "3.weight", "3.bias"}  # PReLU slope: no kind


def test_post_training_keeps_bounds_in_range_and_trains_lower_bounds():
    model = nn.Sequential(nn.Linear(3, 4), nn.ELU(0.5), nn.Linear(4, 4), nn.ReLU6())
    maxima, minima = profile_ranges(model, torch.randn(16, 3) * 5)
    protected = protect_model(model, "fitact", "neuron", maxima, lower=minima)
    module = BoundPostTraining(protected)
    assert list(module.bounds) == ["1.bound", "1.lower", "3.bound"]
    assert all(b.requires_grad for b in module.bounds.values())
    with torch.no_grad():
        protected[1].lower.fill_(-3.0)
        protected[1].bound.fill_(-1.0)
        protected[3].bound.fill_(9.0)
    module.on_train_batch_end(None, None, 0)
    assert protected[1].lower.min().item() == -0.5  # ELU's floor -alpha
    assert protected[1].bound.max().item() == 0.0 and protected[3].bound.max().item() == 6.0
