"""ProAct (protect/protections/proact.py, protect/progressive.py): hybrid bound shapes, progressive
training that moves only bounds, decisions on the validation split only, config checks; and the
full-split profile (the paper's "over the training dataset")."""
import copy

import pytest
import torch

from fitact_pipeline.evaluate import accuracy
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model
from fitact_pipeline.protect.progressive import DEFAULTS, forward_order, keep_rule, progressive_bounds
from fitact_pipeline.protect.protections.proact import ProActReLU
from fitact_pipeline.validate import ConfigError, preflight

FAST = {"epochs": 1, "max_batches_per_epoch": 3, "decays": [0.1, 0.01], "val_images": 200, "lr": 0.05,
        "lr_neuron": 0.01, "max_accuracy_drop": 0.05, "keep": "floor", "order": "forward"}


@pytest.fixture(scope="module")
def digits_proact(trained_digits, one_thread):
    dm, model = trained_digits()
    fold_batchnorm(model)
    reference = copy.deepcopy(model).eval()
    prof = profile_activations(model, dm.profile_dataloader(300), 300)
    return dm, reference, prof, protect_model(model, "proact", None, prof)


class ValOnly:
    """A data module whose test split cannot be read: every decision must come from validation."""

    def __init__(self, dm):
        self.dm, self.val_calls = dm, 0

    def setup(self, stage=None):
        self.dm.setup(stage)

    def train_dataloader(self):
        return self.dm.train_dataloader()

    def val_dataloader(self):
        return self.dm.val_dataloader()

    def test_dataloader(self):
        raise AssertionError("ProAct read the test split")

    def eval_tensors(self, split="test", num_images=None, seed=0):
        if split != "val":
            raise AssertionError(f"ProAct read the {split} split")
        self.val_calls += 1
        return self.dm.eval_tensors(split, num_images, seed)


def test_bounds_are_one_scalar_per_site_and_neuron_wise_at_the_last(digits_proact):
    dm, _, prof, protected = digits_proact
    sites = {n: m for n, m in protected.named_modules() if isinstance(m, ProActReLU)}
    x, _ = dm.eval_tensors("val", 4, 0)
    order = forward_order(protected, x)
    assert list(sites) == list(prof) and order == list(prof) and len(order) >= 3
    for name in order[:-1]:
        assert sites[name].bound.shape == () and sites[name].granularity == "layer"
        assert float(sites[name].bound) == pytest.approx(float(prof[name].max()))
    last = sites[order[-1]]
    assert last.granularity == "neuron" and last.bound.shape == prof[order[-1]].shape
    assert torch.equal(last.bound.detach(), prof[order[-1]])
    assert not any(m.hard for m in sites.values())  # deployed smooth, as the authors' toolbox deploys it


def test_channel_granularity_for_the_others_keeps_the_last_neuron_wise(digits_proact):
    dm, reference, prof, _ = digits_proact
    protected = protect_model(copy.deepcopy(reference), "proact", "channel", prof)
    sites = [m for m in protected.modules() if isinstance(m, ProActReLU)]
    assert all(m.granularity == "channel" for m in sites[:-1]) and sites[-1].granularity == "neuron"


def test_progressive_training_changes_only_bounds_and_decides_on_validation(digits_proact):
    dm, reference, _, protected = digits_proact
    model = copy.deepcopy(protected)
    teacher_before = {k: v.clone() for k, v in reference.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    data = ValOnly(dm)
    res = progressive_bounds(model, reference, data, FAST, seed=3)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(k.endswith(".bound") for k in changed)  # every weight and bias bit-identical
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in teacher_before.items())
    assert data.val_calls == 1  # one stratified validation sample, drawn once
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}  # the flags it came with
    sites = [m for m in model.modules() if isinstance(m, ProActReLU)]
    assert not any(m.hard for m in sites) and not model.training  # the deployed (smooth) form restored
    # one record per trained epoch, site by site in forward order; the constraint holds where kept
    hist = res["history"]
    assert [h["site"] for h in hist[1:]] == sorted(h["site"] for h in hist[1:])
    floor = res["clean_val_acc"] - FAST["max_accuracy_drop"]
    assert all(h["val_acc"] >= floor for h in hist[1:] if h["kept"])
    assert res["val_acc"] >= floor or not any(h["kept"] for h in hist[1:])
    assert res["mean_bound_ratio"] < 1.0 and res["time_s"] > 0 and res["stage"] == "progressive"


def test_a_site_that_breaks_the_constraint_is_reverted(digits_proact):
    dm, reference, _, protected = digits_proact
    model = copy.deepcopy(protected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # a huge pull towards 0 and no tolerance: every epoch breaks the constraint and is reverted
    res = progressive_bounds(model, reference, dm, {**FAST, "lr": 5.0, "lr_neuron": 5.0, "decays": [100.0],
                                                    "max_accuracy_drop": 0.0}, clean_val_acc=1.0)
    assert not any(h["kept"] for h in res["history"][1:])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_the_keep_rules_band_and_floor():
    band = keep_rule({**DEFAULTS, "keep": "band", "band": 0.002}, start_acc=0.9, clean_val_acc=0.95)
    assert band(0.9) and band(0.902) and band(0.898)  # within +-0.2 points of the start (float-exact edges)
    assert not band(0.897) and not band(0.903)  # a gain beyond the band reverts too, as in the toolbox
    floor = keep_rule({**DEFAULTS, "keep": "floor", "max_accuracy_drop": 0.01}, start_acc=0.9, clean_val_acc=0.95)
    assert floor(0.94) and floor(0.99) and not floor(0.939)


def test_the_band_rule_keeps_only_epochs_within_the_band_of_the_start(digits_proact):
    dm, reference, _, protected = digits_proact
    res = progressive_bounds(copy.deepcopy(protected), reference, dm,
                             {**FAST, "keep": "band", "band": 0.01, "lr": 0.5, "lr_neuron": 0.5}, seed=3)
    start = res["history"][0]["val_acc"]
    assert res["start_val_acc"] == start
    kept = [h for h in res["history"][1:] if h["kept"]]
    assert kept and len(kept) < len(res["history"]) - 1  # both decisions happen
    assert all(abs(h["val_acc"] - start) <= 0.01 + 1e-9 for h in kept)
    assert all(abs(h["val_acc"] - start) > 0.01 for h in res["history"][1:] if not h["kept"])
    assert abs(res["val_acc"] - start) <= 0.01 + 1e-9  # the deployed model is the last kept bounds


def test_the_defaults_are_the_toolbox_schedule_and_the_config_spells_them_out():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fitact_pipeline.validate import CONF_DIR

    assert DEFAULTS["decays"] == [4 * 10.0 ** -e for e in range(5, 16)] and DEFAULTS["order"] == "reverse"
    assert (DEFAULTS["keep"], DEFAULTS["band"], DEFAULTS["lr"], DEFAULTS["lr_neuron"]) == ("band", 0.002, 0.01, 0.01)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["protection=proact"])
    conf = OmegaConf.to_container(cfg.protection, resolve=True)
    assert conf["hard"] is False
    assert conf["progressive"]["decays"] == pytest.approx(DEFAULTS["decays"], rel=1e-12)
    assert {k: v for k, v in conf["progressive"].items() if k != "decays"} == \
        {k: v for k, v in DEFAULTS.items() if k != "decays"}


def test_reverse_order_trains_the_last_site_first(digits_proact):
    dm, reference, prof, protected = digits_proact
    res = progressive_bounds(copy.deepcopy(protected), reference, dm,
                             {**FAST, "order": "reverse", "epochs": 0}, seed=3)
    assert res["order"] == list(prof)[::-1] and len(res["history"]) == 1


def test_harden_runs_proact_from_loaders(trained_digits, one_thread):
    from fitact_pipeline import harden

    dm, model = trained_digits()
    h = harden(model, "proact", dm.train_dataloader(), dm.val_dataloader(), profile_images=200,
               progressive={**FAST, "decays": [0.1]})
    assert h.bounds_info["stage"] == "progressive" and accuracy(h.model, dm.val_dataloader()) > 0.5


def test_full_split_profile_is_the_max_over_every_training_image(trained_digits, one_thread):
    dm, model = trained_digits()
    model.eval()
    prof = profile_activations(model, dm.profile_dataloader(None), None)  # profile_images: null
    train = dm._split("train")
    seen, maxima = 0, {}
    hooks = [m.register_forward_hook(lambda mod, i, out, n=n: maxima.__setitem__(
        n, torch.maximum(maxima[n], out.amax(0)) if n in maxima else out.amax(0)))
        for n, m in model.named_modules() if isinstance(m, torch.nn.ReLU)]
    from fitact_pipeline.data.base import normalise

    with torch.no_grad():
        for start in range(0, len(train.labels), 97):  # every training image, in a batching of our own
            batch = normalise(train.images[start:start + 97], dm.mean, dm.std)
            model(batch)
            seen += len(batch)
    for h in hooks:
        h.remove()
    assert seen == len(train.labels) > 1000
    assert set(prof) == set(maxima)
    for name in prof:
        assert torch.allclose(prof[name], maxima[name], atol=1e-6), name


@pytest.mark.parametrize("argv, fragment", [
    (["protection=proact", "protection.progressive.order=sideways"],
     "protection.progressive.order='sideways' is not allowed; choose one of: forward, reverse"),
    (["protection=proact", "protection.progressive.decays=[]"], "protection.progressive.decays=[] is not allowed"),
    (["protection=proact", "protection.progressive.lr=0"], "protection.progressive.lr=0 is not allowed"),
    (["protection=proact", "protection.progressive.keep=best"],
     "protection.progressive.keep='best' is not allowed; choose one of: band, floor"),
    (["protection=proact", "protection.progressive.band=2"], "protection.progressive.band=2 is not allowed"),
    (["protection=proact", "protection.granularity=neuron"], "protection.granularity='neuron' is not allowed"),
    (["protection=proact", "+protection.progressive.foo=1"], "unknown config option 'protection.progressive.foo'"),
])
def test_bad_proact_values_are_refused_with_one_line(argv, fragment):
    with pytest.raises(ConfigError) as err:
        preflight(argv)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_the_hard_form_is_the_labelled_variant_now_that_smooth_is_the_default():
    from fitact_pipeline.protect import PROTECTIONS
    from fitact_pipeline.report.runs import variant_of

    tags = {"protection": "proact", "granularity": "layer"}
    assert variant_of(tags, {"protection.hard": "False"}) == "proact"
    assert variant_of(tags, {"protection.hard": "True"}) == "proact hard"
    assert PROTECTIONS["proact"].inference_form({"protection.hard": "False"}) == "FitReLU (smooth)"
    assert PROTECTIONS["proact"].inference_form({"protection.hard": "True"}) == "FitReLU-Naive (hard)"
    assert variant_of({"protection": "ranger", "granularity": "layer"}, {"protection.nonfinite": "zero"}) == \
        "ranger nonfinite=zero"
