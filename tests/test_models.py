"""Every registered model: shapes, a training step, one nn.ReLU module per call site, sizes."""

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fitact_pipeline.models import MODELS, build_model

# Small widths keep the whole file fast on a shared 2-core machine.
SMALL_WIDTH = {"small_cnn": 0.5, "alexnet": 0.125, "vgg16": 0.125, "resnet50": 0.125}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_has_the_paper_models():
    assert {"small_cnn", "alexnet", "vgg16", "resnet50"} <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_channels,size,classes", [(3, 32, 10), (1, 8, 7), (3, 32, 100)])
def test_output_shape(name, in_channels, size, classes):
    model = build_model(name, num_classes=classes, in_channels=in_channels, width=SMALL_WIDTH[name]).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_training_step_changes_every_weight_and_lowers_loss(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, width=SMALL_WIDTH[name]).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):  # dropout makes one step noisy; three on the same batch must go down
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    unchanged = [k for k, v in model.named_parameters() if torch.equal(v, before[k])]
    assert unchanged == []


class CountReLUCalls(TorchFunctionMode):
    """Counts every relu function call, including those nn.ReLU makes and any direct F.relu."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.relu, torch.relu_, nn.functional.relu, torch.Tensor.relu, torch.Tensor.relu_):
            self.calls += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_relu_call_site_is_its_own_module(name):
    model = build_model(name, num_classes=10, width=SMALL_WIDTH[name]).eval()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    # model.modules() de-duplicates; a reused module would appear twice without de-duplication.
    all_relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == len(all_relus) > 0

    calls: dict[int, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
             for m in relus]
    counter = CountReLUCalls()
    with torch.no_grad(), counter:
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert sorted(calls.values()) == [1] * len(relus), "each ReLU module must be called exactly once"
    assert len(calls) == len(relus)
    assert counter.calls == len(relus), "a relu call outside an nn.ReLU module (F.relu?)"


EXPECTED_RELUS = {"vgg16": 13, "resnet50": 1 + 3 * 16, "alexnet": 7, "small_cnn": 3}


@pytest.mark.parametrize("name", sorted(EXPECTED_RELUS))
def test_relu_site_count(name):
    model = build_model(name, num_classes=10, width=SMALL_WIDTH[name])
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == EXPECTED_RELUS[name]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,low,high", [
    ("vgg16", 14.6e6, 14.8e6),       # CIFAR VGG16-BN: 14,724,042
    ("resnet50", 23.4e6, 23.6e6),    # CIFAR ResNet50: 23,520,842
    ("alexnet", 4_362_186, 4_362_186),  # documented in models/alexnet.py
])
def test_parameter_count_at_width_1(name, low, high):
    assert low <= n_params(build_model(name, num_classes=10, width=1.0)) <= high


def test_small_cnn_is_small_on_digits():
    assert 10_000 <= n_params(build_model("small_cnn", num_classes=10, in_channels=1)) <= 50_000


@pytest.mark.parametrize("name", ["vgg16", "small_cnn"])
def test_width_scales_parameters_quadratically(name):
    full = n_params(build_model(name, 10, width=1.0))
    quarter = n_params(build_model(name, 10, width=0.25))
    assert 10 < full / quarter < 17  # ~16x for the convolutions, less for heads and BatchNorm


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"unknown model 'lenet'; choose one of: .*vgg16"):
        build_model("lenet", 10)


@pytest.mark.parametrize("width", [0, -1.0, float("nan"), "wide"])
def test_bad_width(width):
    with pytest.raises(ValueError, match="bad model width"):
        build_model("vgg16", 10, width=width)
