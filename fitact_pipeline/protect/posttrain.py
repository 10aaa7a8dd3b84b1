"""FitAct bound-only post-training (DESIGN.md §2.3).

Only the ``bound`` parameters of FitReLU modules train; every weight, bias and BatchNorm statistic
is frozen and the wrapped model stays in eval mode (BatchNorm uses running statistics, dropout is
off), so post-training cannot change anything but the bounds.

Loss = cross-entropy + zeta * penalty, trained through the smooth FitReLU (the hard form has no
gradient w.r.t. the bound). The penalty is sum over sites of mean(bound^2) (``penalty: mean_square``,
the default) or the paper's literal sum of every bound (``penalty: sum``); with ``fault_rate`` set,
the loss also has ``fault_weight`` x the cross-entropy of the model under a fresh fault map on its
weights at every step (fault_aware.py). Validation uses the form the model will be
deployed with (``FitReLU.hard`` as protect_model set it). After every epoch the bounds are kept if
validation accuracy >= clean validation accuracy - max_accuracy_drop (the paper's Eq. 8) and their
mean bound ratio is the smallest so far; the kept bounds are restored at the end. Epoch 0 is the
profiled bounds themselves, so the result is never worse than the starting point.

Adam normalises step sizes: each bound moves by about ``lr`` per step whatever zeta is (as long as
zeta's gradient is above Adam's eps), so ``lr`` sets the shrink rate; see docs/protections.md.

Sites whose activation has a lower bound (LeakyReLU, PReLU, ELU) train it alongside: its penalty
is the same mean(a^2), it is kept <= 0 (and >= the activation's own floor, ELU's -alpha), and it
counts in the mean bound ratio like an upper bound; upper bounds stay <= the activation's natural
cap (ReLU6: 6). For a ReLU model nothing of this applies and the steps are what they were.
"""
from __future__ import annotations

import math
import time
from typing import Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_keys, expect_bool, expect_choice, expect_int, expect_number
from ..configs import group_config
from ..device import lightning_accelerator
from ..evaluate import count_correct
from .bound_training import bound_diagnostics, bound_penalty, bound_tensors, fitrelus, keep_in_range
from .fault_aware import FaultyTwin
from .protections.fitact import set_fitrelu_hard

#: the post-training settings and their defaults, as declared in conf/posttrain/default.yaml (evidence
#: for them: docs/protections.md, "Post-training defaults"); no progress bar outside a job
DEFAULTS = {**group_config("posttrain", "default"), "progress_bar": False}
#: settings that change the post-trained bounds (the bounds' cache key reads these)
RESULT_KEYS = tuple(k for k in DEFAULTS if k != "progress_bar")
PENALTIES = ("mean_square", "sum")


def result_settings(cfg: Mapping) -> dict:
    """The post-training settings a bounds key holds (docs/tracking.md)."""
    return {k: cfg[k] for k in RESULT_KEYS if k in cfg}


class BoundPostTraining(L.LightningModule):
    """Trains the FitReLU bounds of ``model`` (frozen otherwise) with CE + zeta * penalty [+ the
    faulty twin's term]."""

    def __init__(self, model: nn.Module, lr: float = DEFAULTS["lr"], zeta: float = DEFAULTS["zeta"],
                 penalty: str = DEFAULTS["penalty"], twin=None):
        super().__init__()
        self.model = model
        self.lr, self.zeta, self.penalty = float(lr), float(zeta), penalty
        self.twin = twin  # fault_aware.FaultyTwin, or None
        self.sites = fitrelus(model)
        if not self.sites:
            raise ValueError("post-training needs a model protected with 'fitact' (no FitReLU found)")
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self.bounds = bound_tensors(self.sites)
        for b in self.bounds.values():
            b.requires_grad_(True)
        self.initial = {n: b.detach().clone() for n, b in self.bounds.items()}
        self.deploy_hard = {n: m.hard for n, m in self.sites.items()}
        self.model.eval()
        self._losses: list[float] = []
        self._correct = self._seen = 0

    def train(self, mode: bool = True):
        # Lightning calls train() at every epoch start; the wrapped model must stay in eval mode
        super().train(mode)
        self.model.eval()
        return self

    def forward(self, x):
        return self.model(x)

    def bound_penalty(self) -> torch.Tensor:
        return bound_penalty(self.bounds.values(), self.penalty)

    def diagnostics(self) -> dict:
        """bound_diagnostics of the current bounds, and the penalty term zeta * penalty."""
        with torch.no_grad():
            return {**bound_diagnostics(self.bounds, self.initial), "penalty": self.zeta * float(self.bound_penalty())}

    def mean_bound_ratio(self) -> float:
        return bound_diagnostics(self.bounds, self.initial)["mean_bound_ratio"]

    def training_step(self, batch, batch_idx):
        x, y = batch
        set_fitrelu_hard(self.model, False)  # smooth form: the bound gets a gradient
        loss = F.cross_entropy(self.model(x), y) + self.zeta * self.bound_penalty()
        self._losses.append(float(loss.detach()))
        if self.twin is not None:  # + fault_weight x the gradient of the loss under a sampled fault map
            loss = loss + self.twin.surrogate(x, y, self.global_step)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # a negative bound means the same as 0 (every activation cut); keep bounds in the stored range
        with torch.no_grad():
            for m in self.sites.values():
                keep_in_range(m)

    def on_validation_epoch_start(self):
        set_fitrelu_hard(self.model, self.deploy_hard)  # decide on the deployed form
        self._correct = self._seen = 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._correct += count_correct(self.model(x), y)
        self._seen += int(y.numel())

    def val_accuracy(self) -> float:
        return self._correct / max(self._seen, 1)

    def configure_optimizers(self):
        return torch.optim.Adam(list(self.bounds.values()), lr=self.lr)


class _Selector(L.Callback):
    """After each validation epoch: record history, keep the smallest bounds that meet Eq. 8."""

    def __init__(self, floor: float):
        self.floor = floor
        self.history: list[dict] = []
        self.best = None  # (ratio, epoch, bounds)

    def consider(self, module: BoundPostTraining, epoch: int, loss: float) -> None:
        rec = {"epoch": epoch, "loss": loss, "val_acc": module.val_accuracy(), **module.diagnostics()}
        self.history.append(rec)
        if rec["val_acc"] >= self.floor and (self.best is None or rec["mean_bound_ratio"] < self.best[0]):
            self.best = (rec["mean_bound_ratio"], epoch, {n: b.detach().clone() for n, b in module.bounds.items()})

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        losses = module._losses
        loss = float(sum(losses) / len(losses)) if losses else math.nan
        module._losses = []
        self.consider(module, trainer.current_epoch + 1, loss)


def check_posttrain_config(cfg: Mapping) -> None:
    """A one-line ConfigError for a bad ``posttrain`` value, before any work."""
    check_keys(cfg, "posttrain", DEFAULTS)
    expect_int(cfg.get("epochs", 1), "posttrain.epochs", 0)
    expect_number(cfg.get("lr", 0.01), "posttrain.lr", 0, low_open=True)
    expect_number(cfg.get("zeta", 0.1), "posttrain.zeta", 0)
    expect_number(cfg.get("max_accuracy_drop", 0.0), "posttrain.max_accuracy_drop", 0, 1)
    expect_int(cfg.get("max_batches_per_epoch"), "posttrain.max_batches_per_epoch", 1, allow_none=True)
    expect_bool(cfg.get("progress_bar", False), "posttrain.progress_bar")
    expect_choice(cfg.get("penalty", DEFAULTS["penalty"]), "posttrain.penalty", PENALTIES)
    expect_number(cfg.get("fault_rate"), "posttrain.fault_rate", 0, 1, low_open=True, allow_none=True)
    expect_number(cfg.get("fault_weight", 1.0), "posttrain.fault_weight", 0)


def _cfg(cfg) -> dict:
    out = dict(DEFAULTS)
    if cfg is not None:
        items = cfg.items() if hasattr(cfg, "items") else dict(cfg).items()
        for k, v in items:
            if k not in DEFAULTS:
                raise ValueError(f"unknown post-training option {k!r}; allowed: {', '.join(DEFAULTS)}")
            out[k] = v
    drop = out["max_accuracy_drop"]
    if not (isinstance(drop, (int, float)) and 0.0 <= float(drop) <= 1.0):
        raise ValueError(f"max_accuracy_drop must be in [0, 1] (a fraction of accuracy), got {drop!r}")
    return out


def posttrain_bounds(model: nn.Module, datamodule, cfg=None, clean_val_acc: float | None = None,
                     faults: Mapping | None = None) -> dict:
    """Post-train the FitReLU bounds of ``model`` in place; returns history, time and selection.

    ``cfg`` keys: those of DEFAULTS (conf/posttrain/default.yaml). ``clean_val_acc`` is the
    unprotected model's validation accuracy (fraction); when None, the protected model's accuracy at
    the profiled bounds is used. ``faults``: the stored format of a fault-aware post-training's
    twin (FaultInjector's fmt, word_bits, frac_bits, include, exclude; default Q15.16). Each history
    record holds the epoch's loss, validation accuracy and bound_diagnostics. Nothing is written to
    disk (no logger, no checkpoint files): the returned history is the record.
    """
    c = _cfg(cfg)
    twin = None
    if c["fault_rate"] is not None:
        twin = FaultyTwin(model, c["fault_rate"], c["fault_weight"], faults)
    module = BoundPostTraining(model, lr=c["lr"], zeta=c["zeta"], penalty=c["penalty"], twin=twin)
    datamodule.setup("fit")
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    device = next(model.parameters()).device
    clean_val_acc, selector = _epoch_zero(module, val_loader, device, clean_val_acc, float(c["max_accuracy_drop"]))

    accelerator, devices = lightning_accelerator(device)
    trainer = L.Trainer(
        max_epochs=int(c["epochs"]), logger=False, enable_checkpointing=False,
        enable_progress_bar=bool(c["progress_bar"]), enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[selector], accelerator=accelerator, devices=devices,
        limit_train_batches=c["max_batches_per_epoch"] or 1.0, deterministic=False,
        default_root_dir=None,
    )
    start = time.perf_counter()
    if int(c["epochs"]) > 0:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
    elapsed = time.perf_counter() - start

    _, epoch, bounds = selector.best
    with torch.no_grad():
        for n, b in module.bounds.items():
            b.copy_(bounds[n].to(b.device))
    set_fitrelu_hard(model, module.deploy_hard)
    for n, p in model.named_parameters():  # the flags the model came with
        p.requires_grad_(module._requires_grad.get(n, p.requires_grad))
    model.eval()
    kept = module.diagnostics()
    return {"history": selector.history, "time_s": elapsed, "selected_epoch": epoch,
            "mean_bound_ratio": kept["mean_bound_ratio"], "clean_val_acc": float(clean_val_acc),
            "diagnostics": kept}


def _epoch_zero(module: BoundPostTraining, val_loader, device, clean_val_acc: float | None, drop: float):
    """Validate the profiled bounds as epoch 0, the fallback when no trained epoch meets the
    constraint; returns (clean_val_acc, the selector that starts from it)."""
    module.on_validation_epoch_start()
    with torch.no_grad():
        for i, (x, y) in enumerate(val_loader):
            module.validation_step((x.to(device), y.to(device)), i)
    if clean_val_acc is None:
        clean_val_acc = module.val_accuracy()
    selector = _Selector(float(clean_val_acc) - drop)
    selector.consider(module, 0, math.nan)
    if selector.best is None:  # even the profiled bounds miss the floor: keep them anyway
        selector.best = (1.0, 0, {n: b.clone() for n, b in module.initial.items()})
    return clean_val_acc, selector
