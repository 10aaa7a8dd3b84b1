"""FitAct bound-only post-training on a small real task (digits)."""
import copy

import pytest
import torch

from fitact_pipeline.evaluate import accuracy
from fitact_pipeline.models import build_model
from fitact_pipeline.protect import profile_activations, protect_model
from fitact_pipeline.protect.posttrain import BoundPostTraining, posttrain_bounds
from fitact_pipeline.protect.protections.fitact import FitReLU


@pytest.fixture(scope="module")
def digits_fitact(trained_digits):
    dm, model = trained_digits()
    clean = accuracy(model, dm.val_dataloader())
    # BatchNorm deliberately NOT folded: its running statistics must survive post-training untouched
    prof = profile_activations(model, dm.profile_dataloader(500), 500)
    return dm, protect_model(model, "fitact", "neuron", prof, hard=True), clean


def test_posttrain_shrinks_bounds_changes_nothing_else(digits_fitact):
    dm, protected, clean = digits_fitact
    model = copy.deepcopy(protected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = posttrain_bounds(model, dm, {"epochs": 4, "lr": 0.03, "zeta": 0.1, "max_accuracy_drop": 0.02}, clean)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(".bound") for k in changed)  # only bounds moved, BN stats included
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2, 3, 4]
    assert res["selected_epoch"] > 0 and res["mean_bound_ratio"] < 0.97  # measurably smaller bounds
    sel = res["history"][res["selected_epoch"]]
    assert sel["mean_bound_ratio"] == pytest.approx(res["mean_bound_ratio"])
    # the Eq. 8 constraint holds for the restored bounds, re-measured independently
    assert sel["val_acc"] >= clean - 0.02
    assert accuracy(model, dm.val_dataloader()) == pytest.approx(sel["val_acc"])
    # it is the smallest-bound epoch among those meeting the constraint
    ok = [h for h in res["history"] if h["val_acc"] >= clean - 0.02]
    assert sel["mean_bound_ratio"] == min(h["mean_bound_ratio"] for h in ok)
    assert res["time_s"] > 0 and all(m.hard for m in model.modules() if isinstance(m, FitReLU))
    assert not model.training


def test_default_settings_shrink_the_bounds_within_the_constraint(digits_fitact):
    # the shipped defaults (conf/posttrain/default.yaml == DEFAULTS), not tuned test settings
    dm, protected, clean = digits_fitact
    model = copy.deepcopy(protected)
    res = posttrain_bounds(model, dm, None, clean)
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]
    assert res["selected_epoch"] > 0 and res["mean_bound_ratio"] < 0.99
    assert res["history"][res["selected_epoch"]]["val_acc"] >= clean - 0.01


def test_wrapped_model_stays_in_eval_mode(digits_fitact):
    _, protected, _ = digits_fitact
    module = BoundPostTraining(copy.deepcopy(protected))
    module.train()
    assert module.training and not any(m.training for m in module.model.modules())
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bound") for n in trainable)


def test_zero_drop_never_loses_accuracy(digits_fitact):
    dm, protected, clean = digits_fitact
    model = copy.deepcopy(protected)
    res = posttrain_bounds(model, dm, {"epochs": 1, "lr": 0.3, "zeta": 10.0, "max_accuracy_drop": 0.0}, clean)
    # an aggressive step that wrecks accuracy must not be selected
    assert res["history"][1]["val_acc"] < clean
    assert res["selected_epoch"] == 0 and res["mean_bound_ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("drop", [-0.1, 1.5, "x"])
def test_bad_max_accuracy_drop(digits_fitact, drop):
    dm, protected, clean = digits_fitact
    with pytest.raises(ValueError, match=r"^max_accuracy_drop must be in \[0, 1\]"):
        posttrain_bounds(copy.deepcopy(protected), dm, {"max_accuracy_drop": drop}, clean)


def test_needs_fitact_model():
    with pytest.raises(ValueError, match="no FitReLU"):
        BoundPostTraining(build_model("small_cnn", 10, 1, 0.25))


def test_config_defaults_are_the_code_defaults():
    from pathlib import Path

    from omegaconf import OmegaConf

    from fitact_pipeline.protect.posttrain import DEFAULTS

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "posttrain" / "default.yaml")
    shipped = {k: v for k, v in OmegaConf.to_container(conf, resolve=False).items() if k != "progress_bar"}
    assert shipped == {k: v for k, v in DEFAULTS.items() if k != "progress_bar"}
