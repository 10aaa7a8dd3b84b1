"""Baseline training: learns, is bit-reproducible, saves weights-only checkpoints; accuracy()."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from fitact_pipeline.data import DigitsDataModule
from fitact_pipeline.models import build_model
from fitact_pipeline.evaluate import accuracy
from fitact_pipeline.training import ClassifierModule, train_baseline, warmup_cosine

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = {"epochs": 4, "lr": 0.1, "warmup_epochs": 1, "batch_size": 64, "progress_bar": False}


def train_digits(seed, cfg=FAST, output_dir=None, subset=None):
    dm = DigitsDataModule(train_subset=subset, seed=0)
    model = build_model("small_cnn", num_classes=10, in_channels=1, width=0.5)
    info = train_baseline(model, dm, cfg, seed=seed, output_dir=output_dir)
    return model, dm, info


def test_warmup_then_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(0, 0, 100) == pytest.approx(1.0)


def test_optimizer_is_the_design_recipe():
    module = ClassifierModule(nn.Linear(2, 2))
    hp = module.hparams
    assert (hp.lr, hp.momentum, hp.nesterov, hp.weight_decay) == (0.01, 0.9, True, 5e-4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return (*train_digits(seed=7, output_dir=out), out)


def test_train_baseline_learns_and_reports(trained):
    model, dm, info, _ = trained
    assert set(info) == {"train_time_s", "val_acc", "epochs"}
    assert info["epochs"] == 4 and info["train_time_s"] > 0
    assert info["val_acc"] > 0.6  # chance is 0.1
    assert accuracy(model, dm.eval_tensors("test")) > 0.6
    assert not model.training


def test_same_seed_gives_bit_identical_weights(trained):
    model, _, info, _ = trained
    torch.manual_seed(1234)  # global RNG state must not matter
    again, _, info2 = train_digits(seed=7, cfg=OmegaConf.create(FAST))  # DictConfig accepted too
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert info2["val_acc"] == info["val_acc"]
    other, _, _ = train_digits(seed=8)
    assert not torch.equal(other.state_dict()["1.weight"], model.state_dict()["1.weight"])


def test_checkpoint_loads_weights_only(trained):
    model, _, _, out = trained
    state = torch.load(out / "model.pt", weights_only=True)
    fresh = build_model("small_cnn", num_classes=10, in_channels=1, width=0.5)
    fresh.load_state_dict(state)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert (out / "metrics.csv").exists()


def test_max_time_stops_early():
    _, _, info = train_digits(seed=0, cfg={**FAST, "epochs": 1000, "max_time_s": 1})
    assert info["epochs"] < 1000 and info["train_time_s"] < 30


class Constant(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_accuracy_counts_non_finite_logits_as_wrong():
    labels = torch.zeros(4, dtype=torch.long)
    images = torch.zeros(4, 1)
    assert accuracy(Constant([5.0, 1.0]), (images, labels)) == 1.0
    assert accuracy(Constant([math.inf, 1.0]), (images, labels)) == 0.0  # argmax would say "right"
    assert accuracy(Constant([math.nan, 1.0]), (images, labels), batch_size=3) == 0.0
