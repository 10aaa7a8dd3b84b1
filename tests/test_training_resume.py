"""Resumable baseline training: a training interrupted after an epoch and resumed from its checkpoint
ends with the weights of one that ran through, bit for bit on CPU, and sees the same batches; the
stage cache resumes a baseline only under its own key and removes the partial folder when done."""

import hashlib
import logging

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from fitact_pipeline.cache import is_cached, partial_path
from fitact_pipeline.configs import CONF_DIR
from fitact_pipeline.data import DigitsDataModule
from fitact_pipeline.identity import result_identity, stage_keys
from fitact_pipeline.models import build_model
from fitact_pipeline import stages
from fitact_pipeline.stages import stage_baseline
from fitact_pipeline.registry import ConfigError
from fitact_pipeline.training import (CHECKPOINT_NAME, DEFAULTS, ClassifierModule, check_train_config,
                                      key_settings, train_baseline)

pytestmark = pytest.mark.usefixtures("one_thread")

# Dropout is not in small_cnn; the global RNG is still drawn from (the test's own callback draws from
# it every step), so a resume that did not restore it would change the recorded draws.
CFG = {"epochs": 4, "lr": 0.1, "warmup_epochs": 1, "batch_size": 64, "progress_bar": False}


class Interrupt(Exception):
    pass


class Record(L.Callback):
    """Per epoch: a digest of every batch (images and labels) and one draw of the global RNG; raises
    ``Interrupt`` at the start of epoch ``stop_at`` (0-based), after the previous checkpoint."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at = stop_at
        self.batches: dict[int, list[str]] = {}
        self.draws: dict[int, list[float]] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.stop_at:
            raise Interrupt(f"stopped at epoch {self.stop_at}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, y = batch
        digest = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()[:16]
        self.batches.setdefault(trainer.current_epoch, []).append(digest)
        self.draws.setdefault(trainer.current_epoch, []).append(torch.rand(()).item())


def fresh():
    return (DigitsDataModule(seed=0), build_model("small_cnn", num_classes=10, in_channels=1, width=0.5))


def weights_equal(a, b) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


@pytest.fixture(scope="module")
def straight():
    dm, model = fresh()
    record = Record()
    info = train_baseline(model, dm, CFG, seed=3, callbacks=[record])
    return model.state_dict(), info, record


def test_interrupted_and_resumed_training_ends_bit_identical(straight, tmp_path, caplog):
    weights, info, record = straight
    dm, model = fresh()
    first = Record(stop_at=2)
    with pytest.raises(Interrupt):
        train_baseline(model, dm, CFG, seed=3, checkpoint_dir=tmp_path, label="k1", callbacks=[first])
    assert (tmp_path / CHECKPOINT_NAME).exists()
    assert first.batches == {e: record.batches[e] for e in (0, 1)}  # the checkpoint changes nothing

    dm, model = fresh()  # a new process: new data module, new model, global RNG elsewhere
    torch.manual_seed(999)
    second = Record()
    with caplog.at_level(logging.INFO, logger="fitact_pipeline.training"):
        info2 = train_baseline(model, dm, CFG, seed=3, checkpoint_dir=tmp_path, label="k1", callbacks=[second])
    assert "resuming k1 from epoch 2" in caplog.text
    assert sorted(second.batches) == [2, 3]  # epochs 0 and 1 are not trained again
    for epoch in (2, 3):  # same batches, in the same order, with the same crops and flips; same RNG
        assert second.batches[epoch] == record.batches[epoch], epoch
        assert second.draws[epoch] == record.draws[epoch], epoch
    assert weights_equal(model.state_dict(), weights)
    assert info2["epochs"] == info["epochs"] == 4 and info2["val_acc"] == info["val_acc"]


def test_checkpointing_alone_changes_no_weight(straight, tmp_path):
    dm, model = fresh()
    train_baseline(model, dm, CFG, seed=3, checkpoint_dir=tmp_path)
    assert weights_equal(model.state_dict(), straight[0])


def test_a_resume_without_the_rng_states_would_differ(straight, tmp_path):
    """The control: Lightning's own restore (weights, optimizer, schedule, epoch) with the loader's
    generators left as a fresh loader has them gives other batches and other weights."""
    dm, model = fresh()
    with pytest.raises(Interrupt):
        train_baseline(model, dm, CFG, seed=3, checkpoint_dir=tmp_path, callbacks=[Record(stop_at=2)])
    ckpt = tmp_path / CHECKPOINT_NAME
    state = torch.load(ckpt, weights_only=True)
    del state["fitact_rng"], state["fitact_train_time_s"]
    other = tmp_path / "plain"
    other.mkdir()
    torch.save(state, other / "plain.ckpt")
    dm, model = fresh()
    dm.batch_size = CFG["batch_size"]
    module = ClassifierModule(model, lr=CFG["lr"], warmup_epochs=CFG["warmup_epochs"])
    record = Record()
    L.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, num_sanity_val_steps=0, callbacks=[record]).fit(
        module, datamodule=dm, ckpt_path=str(other / "plain.ckpt"), weights_only=True)
    assert record.batches[2] != straight[2].batches[2]
    assert not weights_equal(model.state_dict(), straight[0])


def quickstart_cfg(cache_dir):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["experiment=quickstart", "threads=1", "progress_bar=false",
                                            f"cache_dir={cache_dir}", "train.epochs=3"])


def test_stage_cache_resumes_under_the_key_and_removes_the_partial_folder(tmp_path, caplog, monkeypatch):
    cpu = torch.device("cpu")
    cfg = quickstart_cfg(tmp_path / "cache")
    keys = stage_keys(result_identity(cfg, instantiate(cfg.dataset), cpu))
    partial = partial_path(cfg.cache_dir, "baseline", keys["baseline"])
    assert partial.parent == tmp_path / "cache" / "baseline" and partial.name.startswith(keys["baseline"])

    straight_cfg = quickstart_cfg(tmp_path / "straight")  # another cache: trains from scratch
    straight_model, _ = stage_baseline(straight_cfg, instantiate(cfg.dataset), cpu, keys)

    original = stages.train_baseline
    monkeypatch.setattr(stages, "train_baseline",
                        lambda *a, **kw: original(*a, **kw, callbacks=[Record(stop_at=2)]))
    with pytest.raises(Interrupt):
        stage_baseline(cfg, instantiate(cfg.dataset), cpu, keys)
    monkeypatch.undo()
    assert (partial / CHECKPOINT_NAME).exists() and not is_cached(cfg.cache_dir, "baseline", keys["baseline"])

    with caplog.at_level(logging.INFO, logger="fitact_pipeline.training"):
        model, info = stage_baseline(cfg, instantiate(cfg.dataset), cpu, keys)
    assert f"resuming {keys['baseline']} from epoch 2" in caplog.text
    assert info["epochs"] == 3
    assert weights_equal(model.state_dict(), straight_model.state_dict())
    assert is_cached(cfg.cache_dir, "baseline", keys["baseline"]) and not partial.exists()


def test_added_settings_at_their_default_leave_the_baseline_key_as_it_was():
    base = {k: v for k, v in DEFAULTS.items() if k != "progress_bar"}
    assert "precision" not in key_settings(base) and "channels_last" not in key_settings(base)
    assert key_settings({**base, "precision": "bf16-mixed"})["precision"] == "bf16-mixed"
    assert key_settings({**base, "channels_last": True})["channels_last"] is True
    with pytest.raises(ConfigError, match=r"train.precision='bf16' is not allowed; choose one of: 32-true, bf16-mixed"):
        check_train_config({"precision": "bf16"})


def test_bf16_channels_last_training_learns_and_hands_back_a_plain_float32_model(tmp_path):
    dm, model = fresh()
    cfg = {**CFG, "precision": "bf16-mixed", "channels_last": True}
    with pytest.raises(Interrupt):  # and it resumes under these settings too
        train_baseline(model, dm, cfg, seed=3, checkpoint_dir=tmp_path, callbacks=[Record(stop_at=2)])
    dm, model = fresh()
    info = train_baseline(model, dm, cfg, seed=3, checkpoint_dir=tmp_path)
    assert info["val_acc"] > 0.6 and info["epochs"] == 4  # chance is 0.1
    for name, p in model.state_dict().items():
        assert p.dtype in (torch.float32, torch.int64) and p.is_contiguous(), name


def composed_with_hydra(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_paper_cpu_is_full_width_on_the_copy_with_the_paper_rates_and_nested_campaigns():
    base = composed_with_hydra("experiment=paper_cpu")
    params = base.hydra.sweeper.params
    assert params.model.split(",") == ["vgg16_cpu", "alexnet_cpu"]
    assert params.protection.split(",") == ["none", "ranger", "clipact_ft", "fitact"]
    nested = composed_with_hydra("experiment=repro_cpu_nested").campaign
    for model, epochs in (("vgg16_cpu", 16), ("alexnet_cpu", 12)):
        cfg = composed_with_hydra("experiment=paper_cpu", f"model={model}")
        assert cfg.model.width == 1.0 and cfg.dataset.name == "cifar10_copy"
        assert (cfg.train.epochs, cfg.train.precision, cfg.train.channels_last) == (epochs, "bf16-mixed", True)
        check_train_config(cfg.train)
        assert list(cfg.campaign.rates) == [1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5]
        assert cfg.campaign.design == "nested" and cfg.campaign.adaptive == nested.adaptive
        assert cfg.campaign.adaptive.enabled and cfg.campaign.adaptive.target_halfwidth == 0.01
