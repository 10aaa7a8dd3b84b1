"""Stage keys come from a whitelist of the settings that change a stage's result: paths, kernels,
timing and logging settings never re-run a finished stage; everything that changes a result does."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from fitact_pipeline.keys import baseline_key, bounds_key, job_key, profile_key

CONF = Path(__file__).resolve().parents[1] / "conf"
CPU = torch.device("cpu")


def keys(*overrides: str) -> dict[str, str]:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # the paths interpolate hydra:runtime.cwd
    dm = instantiate(cfg.dataset)
    return {name: fn(cfg, dm, CPU) for name, fn in
            (("baseline", baseline_key), ("profile", profile_key), ("bounds", bounds_key), ("job", job_key))}


@pytest.mark.parametrize("override", [
    "cache_dir=/elsewhere/cache", "figures_dir=/elsewhere/figures", "tracking.root=/elsewhere/mlruns",
    "tracking.experiment=other", "overhead.enabled=true", "overhead.repeats=3", "profile_site=2",
    "protection.fused=true", "progress_bar=false", "threads=1", "dataset.num_workers=2",
    "dataset.eval_batch_size=7", "tracking.resume=false"])
def test_settings_that_do_not_change_results_change_no_key(override):
    assert keys(override) == keys()


def test_a_moved_imagefolder_tree_keeps_its_keys(tmp_path):
    from PIL import Image

    for root in (tmp_path / "a", tmp_path / "b" / "deeper"):
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                (root / split / cls).mkdir(parents=True)
                Image.new("RGB", (8, 8), (10, 20, 30)).save(root / split / cls / "x.png")
    tree = ["dataset=imagefolder", "model=small_cnn"]
    assert keys(*tree, f"dataset.root={tmp_path}/a") == keys(*tree, f"dataset.root={tmp_path}/b/deeper")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a" / "train" / "cat" / "y.png")  # other data
    assert keys(*tree, f"dataset.root={tmp_path}/a")["baseline"] != keys(*tree, f"dataset.root={tmp_path}/b/deeper")["baseline"]


@pytest.mark.parametrize("override, first_changed", [
    ("model.width=0.5", "baseline"), ("train.lr=0.02", "baseline"), ("seed=1", "baseline"),
    ("dataset.val_size=200", "baseline"), ("profile_images=100", "profile"),
    ("faults.fold_batchnorm=false", "profile"), ("posttrain.lr=0.02", "bounds"),
    ("protection.k=10", "bounds"), ("protection.granularity=channel", "bounds"),
    ("campaign.trials=3", "job"), ("campaign.rates=[1e-5]", "job"), ("faults.fmt=float32", "job"),
    ("faults.include=[0.*]", "job")])
def test_every_setting_that_changes_a_result_changes_its_stage_key_and_the_later_ones(override, first_changed):
    order = ["baseline", "profile", "bounds", "job"]
    base, other = keys(), keys(override)
    for stage in order:
        changed = order.index(stage) >= order.index(first_changed)
        assert (base[stage] != other[stage]) == changed, stage


def test_fitact_bounds_do_not_depend_on_the_fault_format_but_a_search_does():
    assert keys("faults=float32")["bounds"] == keys()["bounds"]
    search = ["protection=clipact_ft", "protection.search.rates=[1e-5,1e-4]"]
    assert keys(*search, "faults=float32")["bounds"] != keys(*search)["bounds"]
    # an explicit search rate list decides the search: the campaign's rates do not
    assert keys(*search, "campaign.rates=[1e-6]")["bounds"] == keys(*search, "campaign.rates=[1e-5]")["bounds"]
    no_list = ["protection=clipact_ft", "protection.search.rates=null"]
    assert keys(*no_list, "campaign.rates=[1e-6]")["bounds"] != keys(*no_list, "campaign.rates=[1e-5]")["bounds"]


def test_job_key_changes_with_the_sampler(monkeypatch):
    """A finished run drawn by another sampler must not be resumed as this one's result."""
    from fitact_pipeline import identity

    key = keys()["job"]
    monkeypatch.setattr(identity, "SAMPLER", identity.SAMPLER + "-other")
    assert keys()["job"] != key
