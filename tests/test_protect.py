"""BatchNorm folding, activation-site discovery/splitting, profiling and protect_model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fitact_pipeline.protect import BoundedReLU
from fitact_pipeline.protect.protections.clipact import ClipActReLU
from fitact_pipeline.protect.protections.fitact import FitReLU
from fitact_pipeline.protect.protections.ranger import RangerReLU
from fitact_pipeline.models import MODELS, build_model
from fitact_pipeline.protect import (activation_sites, bound_parameters, fold_batchnorm, profile_activations,
                                     protect_model, split_activation_sites)


def _relu_calls(model, x):
    """Total number of activation calls in one forward (module calls + functional relu calls)."""
    count = [0]
    hooks = [m.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
             for m in model.modules() if isinstance(m, (nn.ReLU, BoundedReLU))]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return count[0]


class ReusedReLU(nn.Module):
    """One nn.ReLU called at two sites, as in torchvision's BasicBlock."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = self.relu(self.conv1(x))
        y = self.relu(self.conv2(y) + y)
        return self.fc(y.mean((2, 3)))


class FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = ReusedReLU()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(F.relu(self.block(x)).relu())


def _sites_match(model, x, protection="fitact", granularity="neuron", functional_calls=0):
    n_calls = _relu_calls(model, x) + functional_calls  # hooks cannot see F.relu calls
    with torch.no_grad():
        ref = model(x)
    profile = profile_activations(model, x)
    assert len(profile) == n_calls
    out = protect_model(model, protection, granularity, profile)
    bounded = [m for m in out.modules() if isinstance(m, BoundedReLU)]
    assert len(bounded) == n_calls  # one bounded module per call site
    assert not any(isinstance(m, nn.ReLU) for m in out.modules())
    assert _relu_calls(out, x) == n_calls  # and each of them called exactly once
    with torch.no_grad():  # bounds at the profiled max do not change clean outputs on the profiled data
        assert torch.allclose(out(x), ref, atol=1e-6)
    return out


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_gets_one_module_per_site(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3, width=0.0625)
    _sites_match(model, torch.randn(2, 3, 32, 32), "clipact", "channel")


def test_reused_relu_is_split():
    torch.manual_seed(0)
    model = ReusedReLU()
    out = _sites_match(model, torch.randn(3, 3, 6, 6))
    assert activation_sites(out) == ["relu", "relu_1"]
    # every other tensor keeps its name (pairs fault maps across protections)
    names = {n for n, _ in out.named_parameters() if not n.endswith(".bound")}
    assert names == {n for n, _ in ReusedReLU().named_parameters()}


def test_functional_relu_is_split():
    torch.manual_seed(0)
    out = _sites_match(FunctionalReLU(), torch.randn(3, 3, 6, 6), "ranger", "layer", functional_calls=2)
    assert sorted(activation_sites(out)) == ["block.relu", "block.relu_1", "relu_fn_1", "relu_fn_2"]


def test_split_is_noop_for_unshared_model():
    model = build_model("small_cnn", 10, 1, 0.25)
    assert split_activation_sites(model) is model


class _Untraceable(ReusedReLU):
    def forward(self, x):
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace this
            return super().forward(x)
        return x


def test_unsplittable_reuse_is_refused_with_names():
    with pytest.raises(ValueError, match=r"cannot be split .*: relu$"):
        profile_activations(_Untraceable(), torch.randn(2, 3, 6, 6))


@pytest.mark.parametrize("act", [nn.Hardtanh(), nn.SELU(), nn.Softplus(), nn.CELU(), nn.RReLU()])
def test_unsupported_activation_refused(act):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), act)
    name = type(act).__name__
    for call in (lambda: activation_sites(model), lambda: protect_model(model, "ranger", "layer", {})):
        with pytest.raises(ValueError, match=rf"cannot bound: 3 \({name}\); bounded forms exist for: relu, relu6"):
            call()


@pytest.mark.parametrize("name", ["small_cnn", "vgg16", "resnet50"])
def test_fold_batchnorm_matches_unfolded(name):
    torch.manual_seed(0)
    model = build_model(name, 10, 3, 0.125 if name != "small_cnn" else 0.5)
    # non-trivial statistics, so a wrong fold cannot pass by accident
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        fold_batchnorm(model)
        assert n_bn > 0 and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model(x), ref, atol=1e-5, rtol=1e-4)


def test_fold_batchnorm_sequential_fallback_and_linear():
    class Seq(nn.Sequential):
        def forward(self, x):  # untraceable: falls back to adjacent children of the Sequential
            assert x.sum() > -1e9
            return super().forward(x)
    torch.manual_seed(0)
    model = Seq(nn.Linear(5, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    model[1].running_mean.uniform_(-1, 1), model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(7, 5)
    ref = model(x)
    fold_batchnorm(model)
    assert isinstance(model[1], nn.Identity) and model[0].bias is not None
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_profile_is_max_over_batch_not_channels():
    model = nn.Sequential(nn.Identity(), nn.ReLU())
    x = torch.zeros(3, 2, 1, 2)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 1.0, 5.0   # neuron (0,0,0): max over batch 5
    x[2, 1, 0, 1] = 7.0                      # channel max 7 lives elsewhere
    x[0, 1, 0, 0] = -4.0                     # negatives are clipped by the ReLU
    loader = [(x[:2], None), (x[2:], None)]  # and the max runs across batches
    prof = profile_activations(model, loader, num_images=3)
    assert list(prof) == ["1"]
    assert prof["1"].shape == (2, 1, 2)
    assert prof["1"].flatten().tolist() == [5.0, 0.0, 0.0, 7.0]
    # num_images limits what is seen: only image 0
    assert profile_activations(model, loader, num_images=1)["1"].flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("granularity,shapes", [
    ("layer", [(), (), (), ()]),
    ("channel", [(8, 1, 1), (8, 1, 1), (16, 1, 1), (16,)]),
    ("neuron", [(8, 8, 8), (8, 8, 8), (16, 4, 4), (16,)]),
])
def test_bound_shapes_and_values(granularity, shapes):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 0.25)
    model[0].append(nn.Linear(16, 16))  # a linear site too
    model[0].append(nn.ReLU())
    x = torch.randn(5, 1, 8, 8)
    prof = profile_activations(model, x)
    out = protect_model(model, "fitact", granularity, prof, hard=True)
    bounds = bound_parameters(out)
    assert [tuple(b.shape) for b in bounds.values()] == shapes
    for site, b in bounds.items():  # the bound is the profile reduced by a max
        assert torch.equal(b.detach().amax(), prof[site].amax())
        assert b.requires_grad
    assert all(isinstance(m, FitReLU) and m.hard for m in out.modules() if isinstance(m, BoundedReLU))


def test_protection_kinds_and_gbrelu():
    model = build_model("small_cnn", 10, 1, 0.25)
    out = protect_model(model, "gbrelu", "neuron", bounds=1.5)
    assert all(b.shape == () and b.item() == 1.5 for b in bound_parameters(out).values())
    prof = profile_activations(build_model("small_cnn", 10, 1, 0.25), torch.randn(2, 1, 8, 8))
    assert isinstance(protect_model(build_model("small_cnn", 10, 1, 0.25), "ranger", "layer", prof)[0][2],
                      RangerReLU)
    assert isinstance(protect_model(build_model("small_cnn", 10, 1, 0.25), "clipact", "layer", prof)[0][2],
                      ClipActReLU)
    m = build_model("small_cnn", 10, 1, 0.25)
    assert protect_model(m, "none") is m and activation_sites(m) == ["0.2", "0.5", "0.9"]


def test_bad_protection_inputs():
    model = build_model("small_cnn", 10, 1, 0.25)
    with pytest.raises(ValueError, match=r"^unknown protection 'tmr'; choose one of: none, ranger"):
        protect_model(model, "tmr", "layer", {})
    with pytest.raises(ValueError, match=r"^unknown granularity 'pixel'; choose one of: layer, channel, neuron$"):
        protect_model(model, "fitact", "pixel", {})
    with pytest.raises(ValueError, match="needs an activation profile"):
        protect_model(model, "fitact", "layer", None)
    with pytest.raises(ValueError, match="no entry for activation sites: 0.2, 0.5, 0.9$"):
        protect_model(model, "fitact", "layer", {})
    with pytest.raises(ValueError, match="needs bounds"):
        protect_model(model, "gbrelu", "layer")


def test_gbrelu_at_chosen_sites_only_leaves_other_sites_relu():
    from fitact_pipeline.protect.protections.gbrelu import GBReLU
    from fitact_pipeline.models import build_model
    from fitact_pipeline.protect import activation_sites, protect_model

    model = build_model("small_cnn", num_classes=10, in_channels=1).eval()
    sites = activation_sites(model)
    protected = protect_model(model, "gbrelu", bounds={sites[1]: 2.0})
    kinds = {name: type(protected.get_submodule(name)) for name in sites}
    assert kinds[sites[1]] is GBReLU and float(protected.get_submodule(sites[1]).bound) == 2.0
    assert all(kind is torch.nn.ReLU for name, kind in kinds.items() if name != sites[1])
