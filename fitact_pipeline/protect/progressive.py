"""ProAct's progressive bound training (Mousavi et al., arXiv 2406.06313; docs/protections.md,
"ProAct", says where it follows the authors' reliable-relu-toolbox and where it differs).

Every weight, bias and BatchNorm statistic is frozen and the model stays in eval mode; the sites'
bounds train one site at a time, last site first (``order: reverse``, the toolbox's; ``forward``:
first to last). At each site, for each Adam weight decay of ``decays`` (largest first; the decay is
what pulls the bound towards 0), up to ``epochs`` epochs of at most ``max_batches_per_epoch`` steps
on the training split with

    loss = ce_weight * CE(student, labels) + kd_weight * T^2 * CE(student / T, softmax(teacher / T))

through the smooth FitReLU, the teacher being the unprotected model. After every epoch the deployed
form is validated on ``val_images`` stratified images of the validation split (never test) and the
``keep`` rule decides: ``band`` (the toolbox's) keeps the epoch's bounds if validation accuracy is
within +-``band`` of the protected model's at its profiled bounds (a gain beyond it reverts too);
``floor`` keeps them if accuracy >= clean validation accuracy - ``max_accuracy_drop`` (FitAct's
Eq. 8). Otherwise the site's bounds go back to the last kept ones and the site moves on to the next
decay. Bounds stay in their range (bound_training.keep_in_range) after every step.
"""
from __future__ import annotations

import functools
import time
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_keys, expect_choice, fail, expect_int, expect_list, expect_number
from ..configs import group_config
from ..evaluate import evaluate_accuracy
from ..layer_types import hooked_forward
from .bound_training import bound_diagnostics, bound_tensors, fitrelus, keep_in_range
from .protections.fitact import FitReLU, set_fitrelu_hard

#: the progressive training's settings and their defaults, as declared in conf/protection/proact.yaml
#: (the toolbox's schedule; the file says what is scaled down for CPU: the epochs)
DEFAULTS = group_config("protection", "proact")["progressive"]
ORDERS = ("forward", "reverse")
KEEP_RULES = ("band", "floor")
# accuracies are counts / images: a difference of exactly `band` must not fail on float rounding
_TOLERANCE = 1e-9


def check_progressive_config(cfg: Mapping) -> None:
    """A one-line ConfigError for a bad ``protection.progressive`` value."""
    p = "protection.progressive"
    check_keys(cfg, p, DEFAULTS)
    c = {**DEFAULTS, **dict(cfg)}
    expect_choice(c["order"], f"{p}.order", ORDERS)
    expect_int(c["epochs"], f"{p}.epochs", 0)
    expect_int(c["max_batches_per_epoch"], f"{p}.max_batches_per_epoch", 1, allow_none=True)
    expect_number(c["lr"], f"{p}.lr", 0, low_open=True)
    expect_number(c["lr_neuron"], f"{p}.lr_neuron", 0, low_open=True)
    decays = expect_list(c["decays"], f"{p}.decays", lambda v, path: expect_number(v, path, 0))
    if not decays:
        fail(f"{p}.decays", decays, "expected a non-empty list of numbers >= 0")
    expect_number(c["ce_weight"], f"{p}.ce_weight", 0)
    expect_number(c["kd_weight"], f"{p}.kd_weight", 0)
    expect_number(c["temperature"], f"{p}.temperature", 0, low_open=True)
    expect_choice(c["keep"], f"{p}.keep", KEEP_RULES)
    expect_number(c["band"], f"{p}.band", 0, 1)
    expect_number(c["max_accuracy_drop"], f"{p}.max_accuracy_drop", 0, 1)
    expect_int(c["val_images"], f"{p}.val_images", 1, allow_none=True)


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The FitReLU sites of ``model`` in the order one forward pass calls them."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, FitReLU)}
    called: list[str] = []
    hooked_forward(model, x, names, lambda mod, inp, out: called.append(names[mod]))
    return list(dict.fromkeys(called))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of the student's tempered log-softmax against the teacher's tempered softmax, x T^2."""
    t = float(temperature)
    soft = F.softmax(teacher / t, dim=1)
    return -(soft * F.log_softmax(student / t, dim=1)).sum(dim=1).mean() * t * t


def progressive_bounds(model: nn.Module, reference: nn.Module, datamodule, cfg: Mapping | None = None,
                       clean_val_acc: float | None = None, seed: int = 0) -> dict:
    """Train the bounds of a ProAct (or any FitReLU) ``model`` in place, site by site, distilled from
    ``reference`` (the unprotected model, not changed). Returns the history (one record per trained
    epoch: ``epoch`` = running count, the site's index, the decay, loss, val_acc, kept, and the
    bound diagnostics of all sites), ``time_s``, the kept bounds' ``mean_bound_ratio`` and
    ``diagnostics``, the site order. ``clean_val_acc`` (fraction) is the reference's validation
    accuracy on the same images when None. Decisions read ``datamodule.eval_tensors("val", ...)`` only."""
    c = {**DEFAULTS, **dict(cfg or {})}
    check_progressive_config(c)
    device = next(model.parameters()).device
    datamodule.setup("fit")
    val_x, val_y = datamodule.eval_tensors("val", c["val_images"], seed)
    val_x, val_y = val_x.to(device), val_y.to(device)
    sites = fitrelus(model)
    if not sites:
        raise ValueError("progressive training needs a model with FitReLU sites (protection 'proact' or 'fitact')")
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    reference.eval()
    deployed = {n: m.hard for n, m in sites.items()}
    bounds = bound_tensors(sites)
    initial = {n: b.detach().clone() for n, b in bounds.items()}

    def validate() -> float:
        set_fitrelu_hard(model, deployed)
        return evaluate_accuracy(model, val_x, val_y)

    if clean_val_acc is None:
        clean_val_acc = evaluate_accuracy(reference, val_x, val_y)
    order = forward_order(model, val_x[:2])
    if c["order"] == "reverse":
        order = order[::-1]
    start_acc = validate()  # the protected model at its profiled bounds: the band's centre
    keeps = keep_rule(c, start_acc, float(clean_val_acc))
    history = [{"epoch": 0, "site": -1, "decay": float("nan"), "loss": float("nan"), "val_acc": start_acc,
                "kept": 1, **bound_diagnostics(bounds, initial)}]
    train_loader = datamodule.train_dataloader()
    started, step = time.perf_counter(), 0

    def record(index: int, **fields) -> None:
        history.append({"epoch": fields.pop("epoch"), "site": index, **fields, **bound_diagnostics(bounds, initial)})

    for index, name in enumerate(order):
        step = _train_site(model, reference, sites[name], c, train_loader, device, validate, keeps,
                           functools.partial(record, index), step)
    elapsed = time.perf_counter() - started
    for n, p in model.named_parameters():
        p.requires_grad_(requires.get(n, p.requires_grad))
    set_fitrelu_hard(model, deployed)
    model.train(was_training)
    diagnostics = bound_diagnostics(bounds, initial)
    return {"stage": "progressive", "history": history, "time_s": elapsed, "order": order,
            "mean_bound_ratio": diagnostics["mean_bound_ratio"], "diagnostics": diagnostics,
            "clean_val_acc": float(clean_val_acc), "start_val_acc": start_acc, "val_acc": validate()}


def _train_site(model: nn.Module, reference: nn.Module, site: FitReLU, c: Mapping, train_loader, device, validate,
                keeps, record, step: int) -> int:
    """One site's bounds, decay by decay (largest first): an epoch that breaks the keep rule is
    reverted and ends that decay. ``record(**fields)`` logs each epoch; returns the running epoch count."""
    params = list(site.bound_tensors().values())
    kept = [p.detach().clone() for p in params]
    lr = c["lr_neuron"] if site.bound.numel() > 1 else c["lr"]
    for p in params:
        p.requires_grad_(True)
    for decay in c["decays"]:
        optimiser = torch.optim.Adam(params, lr=lr, weight_decay=float(decay))
        for _ in range(int(c["epochs"])):
            loss = _train_epoch(model, reference, site, optimiser, train_loader, c, device)
            acc = validate()
            ok = keeps(acc)
            with torch.no_grad():
                if ok:
                    kept = [p.detach().clone() for p in params]
                else:  # revert to the last kept bounds; the next (weaker) decay starts there
                    for p, k in zip(params, kept):
                        p.copy_(k)
            step += 1
            record(epoch=step, decay=float(decay), loss=loss, val_acc=acc, kept=int(ok))
            if not ok:
                break
    for p in params:
        p.requires_grad_(False)
    return step


def keep_rule(c: Mapping, start_acc: float, clean_val_acc: float):
    """acc -> whether an epoch's bounds are kept: ``band``, |acc - start_acc| <= band (the toolbox's,
    two-sided: a gain beyond the band reverts too; start_acc = the protected model at its profiled
    bounds); ``floor``, acc >= clean_val_acc - max_accuracy_drop."""
    if c["keep"] == "band":
        band = float(c["band"])
        return lambda acc: abs(acc - start_acc) <= band + _TOLERANCE
    floor = clean_val_acc - float(c["max_accuracy_drop"])
    return lambda acc: acc >= floor


def _train_epoch(model: nn.Module, teacher: nn.Module, site: FitReLU, optimiser, loader, c: Mapping, device) -> float:
    """One epoch (at most max_batches_per_epoch steps) of the site's bounds; the mean loss."""
    set_fitrelu_hard(model, False)  # the smooth form: the bound gets a gradient
    losses = []
    for i, (x, y) in enumerate(loader):
        if c["max_batches_per_epoch"] is not None and i >= c["max_batches_per_epoch"]:
            break
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            target = teacher(x)
        logits = model(x)
        loss = c["ce_weight"] * F.cross_entropy(logits, y) + c["kd_weight"] * distillation_loss(
            logits, target, c["temperature"])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            keep_in_range(site)
        losses.append(float(loss.detach()))
    return sum(losses) / len(losses) if losses else float("nan")
