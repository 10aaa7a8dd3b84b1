"""Baseline training: a LightningModule with the recipe of DESIGN.md §3, and helpers.

Recipe (defaults): SGD with Nesterov momentum 0.9, lr 0.01, weight decay 5e-4, batch 128, a linear
warm-up over ``warmup_epochs`` then a cosine decay to zero, stepped every batch.

Reproducibility: ``train_baseline`` re-initialises the model's parameters from ``seed`` (unless
``init_from_seed: false``), seeds every RNG Lightning touches, and the data module seeds its own
shuffle and augmentation. On CPU the same seed therefore gives bit-identical weights, whatever the
global RNG state was when the model was built.

Resumption: with ``checkpoint_dir``, the whole training state is written there after every epoch
(``ResumeCheckpoint``) and a later call with the same directory continues from it. Lightning's
checkpoint restores the weights, optimizer, LR scheduler and loop counters; it does not restore the
global RNGs (dropout) or the generators of the data loader (shuffle order, crops, flips), which run on
from epoch to epoch. ``ResumeCheckpoint`` stores those too and puts them back, so an interrupted and
resumed training ends with the same weights, bit for bit on CPU, as one that ran through.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .checks import check_keys, expect_bool, expect_choice, expect_int, expect_number
from .configs import group_config
from .device import lightning_accelerator
from .evaluate import accuracy

#: the training settings and their defaults, as declared in conf/train/default.yaml (a call outside
#: a job, which has no top-level progress_bar to interpolate, shows its progress bar)
DEFAULTS = {**group_config("train", "default"), "progress_bar": True}


#: training settings that change the trained weights (the baseline's cache key reads these)
RESULT_KEYS = tuple(k for k in DEFAULTS if k != "progress_bar")

#: the numeric precisions training runs in (Lightning's names)
PRECISIONS = ("32-true", "bf16-mixed")

#: settings added after baselines were cached, with the value that trains as before: at that value a
#: setting stays out of the baseline's key, so every baseline cached before it keeps its key
ADDED_SETTINGS = {"precision": "32-true", "channels_last": False}


def key_settings(train_cfg: Mapping) -> dict:
    """The training settings a baseline's key holds: every result key given, less an added setting
    at its earlier behaviour (``ADDED_SETTINGS``)."""
    out = {}
    for k in RESULT_KEYS:
        if k in train_cfg:
            value = train_cfg[k]
            value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            if k not in ADDED_SETTINGS or value != ADDED_SETTINGS[k]:
                out[k] = value
    return out


def check_train_config(cfg: Mapping) -> None:
    """A one-line ConfigError for a bad ``train`` value, before any work."""
    check_keys(cfg, "train", DEFAULTS)
    expect_int(cfg.get("epochs", 1), "train.epochs", 0)
    expect_number(cfg.get("lr", 0.01), "train.lr", 0, low_open=True)
    expect_number(cfg.get("momentum", 0.9), "train.momentum", 0, 1, high_open=True)
    expect_number(cfg.get("weight_decay", 0.0), "train.weight_decay", 0)
    expect_number(cfg.get("warmup_epochs", 0), "train.warmup_epochs", 0)
    expect_int(cfg.get("batch_size", 1), "train.batch_size", 1)
    expect_number(cfg.get("max_time_s"), "train.max_time_s", 0, low_open=True, allow_none=True)
    expect_choice(cfg.get("precision", "32-true"), "train.precision", PRECISIONS)
    for key in ("nesterov", "progress_bar", "init_from_seed", "channels_last"):
        if key in cfg:
            expect_bool(cfg[key], f"train.{key}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear from 1/warmup_steps to 1, then cosine from 1 to 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier around ``model`` (trained in place: ``self.model`` is ``model``)."""

    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 5e-4, warmup_epochs: float = 1.0, channels_last: bool = False):
        super().__init__()
        self.model = model
        # Only primitives go into hparams: torch >= 2.6 loads checkpoints weights-only.
        self.save_hyperparameters(ignore=["model"])
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x):
        if self.hparams.channels_last:  # the weights are converted in train_baseline
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _step(self, batch, split: str):
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        on_step = split == "train"
        self.log(f"{split}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=split != "test")
        self.log(f"{split}_acc", acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.model.parameters(), lr=hp.lr, momentum=hp.momentum,
                              nesterov=hp.nesterov and hp.momentum > 0, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, total // max(1, self.trainer.max_epochs))
        warmup = int(round(hp.warmup_epochs * per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _plain_cfg(train_cfg) -> dict:
    if isinstance(train_cfg, DictConfig):
        train_cfg = OmegaConf.to_container(train_cfg, resolve=True)
    if train_cfg is not None and not isinstance(train_cfg, Mapping):
        raise TypeError(f"train_cfg must be a mapping, got {type(train_cfg).__name__}")
    unknown = set(train_cfg or {}) - set(DEFAULTS)
    if unknown:  # tolerated (configs grow), but a typo should not pass silently
        logging.getLogger(__name__).warning("ignoring unknown training keys %s", sorted(unknown))
    return {**DEFAULTS, **{k: v for k, v in (train_cfg or {}).items() if v is not None or k == "max_time_s"}}


def reset_parameters(model: nn.Module, seed: int) -> None:
    """Re-initialise every module with its default initialiser from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()


def quiet_lightning(progress_bar: bool) -> None:
    # Lightning's "GPU available / TPU available" banners are noise in tests and sweeps.
    if not progress_bar:
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
            logging.getLogger(name).setLevel(logging.WARNING)


#: the file ``ResumeCheckpoint`` writes into its directory (the last finished epoch)
CHECKPOINT_NAME = "last.ckpt"
log = logging.getLogger(__name__)


def loader_generators(loader) -> list[torch.Generator]:
    """The generators a training loader draws from: the shuffle's (``DataLoader.generator``, also
    the source of each epoch's base seed) and the augmentation's (``BatchTransform.gen``)."""
    found = [loader.generator, getattr(loader.collate_fn, "gen", None)]
    return [g for g in found if isinstance(g, torch.Generator)]


def rng_states(generators: Sequence[torch.Generator]) -> dict:
    """Every RNG state a training step can draw from, in types a weights-only load accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "loader": [g.get_state() for g in generators]}


def set_global_rng_states(states: Mapping) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


class ResumeCheckpoint(L.Callback):
    """After every training epoch (validation included), the whole training state to
    ``directory/last.ckpt``, written to a temporary file and renamed, so a kill during the write
    leaves the previous epoch's checkpoint. Adds what Lightning's checkpoint lacks: the RNG states
    (``rng_states``) and the training time so far. ``resume``: the RNG states of the checkpoint this
    fit resumes from; the global ones are set when training starts (the loader's generators must be
    set by the caller before ``fit``, as Lightning draws from them while it sets up the loader)."""

    def __init__(self, directory: str | Path, generators: Sequence[torch.Generator], resume: Mapping | None = None,
                 time_before_s: float = 0.0):
        self.directory = Path(directory)
        self.generators = list(generators)
        self.resume = resume
        self.time_before_s = float(time_before_s)
        self.started = time.perf_counter()

    def train_time_s(self) -> float:
        return self.time_before_s + time.perf_counter() - self.started

    def on_train_start(self, trainer, pl_module) -> None:
        if self.resume is not None:
            set_global_rng_states(self.resume)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{CHECKPOINT_NAME}.tmp-{os.getpid()}"
        trainer.save_checkpoint(tmp, weights_only=False)  # the whole state: optimizer, schedule, loops
        os.replace(tmp, self.directory / CHECKPOINT_NAME)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["fitact_rng"] = rng_states(self.generators)
        checkpoint["fitact_train_time_s"] = self.train_time_s()


def train_baseline(model: nn.Module, datamodule, train_cfg=None, seed: int = 0,
                   output_dir: str | Path | None = None, device: torch.device | str | None = None,
                   checkpoint_dir: str | Path | None = None, label: str | None = None,
                   callbacks: Sequence[L.Callback] = ()) -> dict:
    """Train ``model`` in place; return ``{"train_time_s", "val_acc", "epochs"}``.

    ``train_cfg`` keys (all optional, see DEFAULTS): epochs, lr, momentum, nesterov, weight_decay,
    warmup_epochs, batch_size (overrides the data module's), max_time_s (stop after this much
    wall time), precision (32-true or bf16-mixed), channels_last, progress_bar, init_from_seed.
    With ``output_dir``, per-epoch metrics go to ``output_dir/metrics.csv`` (Lightning CSVLogger)
    and the weights to ``output_dir/model.pt`` as a plain state_dict; nothing is logged to MLflow
    here (the caller owns the MLflow run). ``device`` is where training runs (None: a GPU when there
    is one); the model ends on the CPU, float32, in the default memory format.

    ``checkpoint_dir``: the training state is saved there after every epoch, and a checkpoint found
    there is resumed (logged as "resuming <label> from epoch N"); the caller must give each training
    config its own directory (the stage cache names it by the baseline's key) and removes it when the
    result is kept. ``train_time_s`` then counts the earlier runs too. ``callbacks``: more Lightning
    callbacks (run before the checkpoint is written).
    """
    cfg = _plain_cfg(train_cfg)
    if cfg["init_from_seed"]:
        reset_parameters(model, seed)
    L.seed_everything(seed, workers=True, verbose=False)
    quiet_lightning(cfg["progress_bar"])
    if cfg["batch_size"]:
        datamodule.batch_size = int(cfg["batch_size"])

    module = ClassifierModule(model, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                              weight_decay=cfg["weight_decay"], warmup_epochs=cfg["warmup_epochs"],
                              channels_last=cfg["channels_last"])
    if cfg["channels_last"]:
        model.to(memory_format=torch.channels_last)
    logger = False
    if output_dir is not None:
        logger = L.pytorch.loggers.CSVLogger(str(output_dir), name="", version="")
    max_time = {"seconds": float(cfg["max_time_s"])} if cfg["max_time_s"] else None
    accelerator, devices = lightning_accelerator(torch.device(device)) if device is not None else ("auto", 1)
    # The loaders are made here, not by Lightning, so that a resumed run can set their generators
    # before Lightning's first draw from them (it starts the first epoch's iterator while it sets up).
    datamodule.setup("fit")
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    generators = loader_generators(train_loader)
    all_callbacks = list(callbacks)
    ckpt_path, resumed = None, None
    if checkpoint_dir is not None:
        ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
        if ckpt.exists():
            resumed = torch.load(ckpt, map_location="cpu", weights_only=True)
            done = int(resumed["epoch"]) + 1  # saved at the end of its (0-based) epoch
            log.info("resuming %s from epoch %d (%d of %d epochs done, checkpoint %s)",
                     label or checkpoint_dir, done, done, int(cfg["epochs"]), ckpt)
            for gen, state in zip(generators, resumed["fitact_rng"]["loader"], strict=True):
                gen.set_state(state)
            ckpt_path = str(ckpt)
        all_callbacks.append(ResumeCheckpoint(
            checkpoint_dir, generators, resume=None if resumed is None else resumed["fitact_rng"],
            time_before_s=0.0 if resumed is None else resumed["fitact_train_time_s"]))
    trainer = L.Trainer(max_epochs=int(cfg["epochs"]), max_time=max_time, accelerator=accelerator, devices=devices,
                        logger=logger, enable_checkpointing=False, enable_progress_bar=cfg["progress_bar"],
                        enable_model_summary=False, num_sanity_val_steps=0, precision=cfg["precision"],
                        log_every_n_steps=10, callbacks=all_callbacks)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path,
                weights_only=True)
    train_time = time.perf_counter() - start + (0.0 if resumed is None else resumed["fitact_train_time_s"])

    model.cpu().eval()
    if cfg["channels_last"]:  # later stages (folding, fault injection) expect the default layout
        model.to(memory_format=torch.contiguous_format)
    val_acc = accuracy(model, datamodule.val_dataloader())
    if output_dir is not None:
        save_weights(model, Path(output_dir) / "model.pt")
    return {"train_time_s": float(train_time), "val_acc": float(val_acc), "epochs": int(trainer.current_epoch)}


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Plain state_dict: loads with ``torch.load(path, weights_only=True)``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
