"""FitAct bound-only post-training (DESIGN.md §2.3).

Only the ``bound`` parameters of FitReLU modules train; every weight, bias and BatchNorm statistic
is frozen and the wrapped model stays in eval mode (BatchNorm uses running statistics, dropout is
off), so post-training cannot change anything but the bounds.

Loss = cross-entropy + zeta * sum over sites of mean(bound^2), trained through the smooth FitReLU
(the hard form has no gradient w.r.t. the bound). Validation uses the form the model will be
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

from ..checks import check_keys, expect_bool, expect_int, expect_number
from ..device import lightning_accelerator
from ..evaluate import count_correct
from .activations import ACTIVATIONS
from .protections.fitact import FitReLU, set_fitrelu_hard

# Evidence for these defaults: docs/protections.md ("Post-training defaults").
DEFAULTS = {"epochs": 2, "lr": 0.005, "zeta": 0.1, "max_accuracy_drop": 0.01,
            "max_batches_per_epoch": 40, "progress_bar": False}
#: settings that change the post-trained bounds (the bounds' cache key reads these)
RESULT_KEYS = tuple(k for k in DEFAULTS if k != "progress_bar")


def _fitrelus(model: nn.Module) -> dict[str, FitReLU]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FitReLU)}


def _bound_tensors(sites: dict[str, FitReLU]) -> dict[str, nn.Parameter]:
    """Every trained bound, ``<site>.bound`` and ``<site>.lower``, in site order."""
    return {f"{n}.{k}": t for n, m in sites.items() for k, t in m.bound_tensors().items()}


def _keep_in_range(m: FitReLU) -> None:
    """Bounds stay where they mean something: b >= 0 (a negative bound cuts as much as 0) and <= the
    activation's cap; a <= 0 and >= its floor."""
    kind = ACTIVATIONS[m.kind]
    m.bound.clamp_(min=0.0, max=kind.cap)
    if hasattr(m, "lower"):
        m.lower.clamp_(min=kind.floor(m.settings) if kind.floor else None, max=0.0)


class BoundPostTraining(L.LightningModule):
    """Trains the FitReLU bounds of ``model`` (frozen otherwise) with CE + zeta * sum mean(b^2)."""

    def __init__(self, model: nn.Module, lr: float = DEFAULTS["lr"], zeta: float = DEFAULTS["zeta"]):
        super().__init__()
        self.model = model
        self.lr, self.zeta = float(lr), float(zeta)
        self.sites = _fitrelus(model)
        if not self.sites:
            raise ValueError("post-training needs a model protected with 'fitact' (no FitReLU found)")
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        self.bounds = _bound_tensors(self.sites)
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
        return sum(b.pow(2).mean() for b in self.bounds.values())

    def mean_bound_ratio(self) -> float:
        """Mean over bound tensors of mean(bound) / mean(profiled bound) (upper and lower bounds
        alike); bounds profiled at 0 are skipped."""
        ratios = []
        for n, b in self.bounds.items():
            ref = self.initial[n].float().mean().item()
            if ref != 0 and (ref > 0 or n.endswith(".lower")):
                ratios.append(b.detach().float().mean().item() / ref)
        return float(sum(ratios) / len(ratios)) if ratios else 1.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        set_fitrelu_hard(self.model, False)  # smooth form: the bound gets a gradient
        loss = F.cross_entropy(self.model(x), y) + self.zeta * self.bound_penalty()
        self._losses.append(float(loss.detach()))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # a negative bound means the same as 0 (every activation cut); keep bounds in the stored range
        with torch.no_grad():
            for m in self.sites.values():
                _keep_in_range(m)

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
        rec = {"epoch": epoch, "loss": loss, "val_acc": module.val_accuracy(),
               "mean_bound_ratio": module.mean_bound_ratio()}
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


def posttrain_bounds(model: nn.Module, datamodule, cfg=None, clean_val_acc: float | None = None) -> dict:
    """Post-train the FitReLU bounds of ``model`` in place; returns history, time and selection.

    ``cfg`` keys: epochs, lr, zeta, max_accuracy_drop, max_batches_per_epoch (optional),
    progress_bar. ``clean_val_acc`` is the unprotected model's validation accuracy (fraction); when
    None, the protected model's accuracy at the profiled bounds is used. Nothing is written to disk
    (no logger, no checkpoint files): the returned history is the record.
    """
    c = _cfg(cfg)
    module = BoundPostTraining(model, lr=c["lr"], zeta=c["zeta"])
    datamodule.setup("fit")
    train_loader, val_loader = datamodule.train_dataloader(), datamodule.val_dataloader()
    device = next(model.parameters()).device

    # epoch 0: the profiled bounds (also the fallback when no trained epoch meets the constraint)
    module.on_validation_epoch_start()
    with torch.no_grad():
        for i, (x, y) in enumerate(val_loader):
            module.validation_step((x.to(device), y.to(device)), i)
    if clean_val_acc is None:
        clean_val_acc = module.val_accuracy()
    selector = _Selector(float(clean_val_acc) - float(c["max_accuracy_drop"]))
    selector.consider(module, 0, math.nan)
    if selector.best is None:  # even the profiled bounds miss the floor: keep them anyway
        selector.best = (1.0, 0, {n: b.clone() for n, b in module.initial.items()})

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
    return {"history": selector.history, "time_s": elapsed, "selected_epoch": epoch,
            "mean_bound_ratio": module.mean_bound_ratio(), "clean_val_acc": float(clean_val_acc)}
