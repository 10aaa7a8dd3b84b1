"""The one recipe that turns a trained model into a protected one:

    fold BatchNorm -> profile -> protect -> bounds stage

The CLI job (stages.py, with its stage cache), the Python API (``api.harden``) and preflight
(structure.py, on a skeleton with random weights) all run ``prepare`` and ``run_bounds_stage``;
they differ only in where the profile comes from (the cache, a loader, two blank images) and in the
data a bounds stage reads (a data module, or ``data.LoaderData``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .configs import group_config
from .protect import PROTECTIONS, fold_batchnorm, protect_model
from .protect.bounds_stages import BOUNDS_STAGES, BoundsJob

Profile = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class Prepared:
    """A protected model and what it was made from. ``model`` (= ``protected``) is what to deploy;
    ``reference`` is the unprotected model as it is deployed (BatchNorm folded when asked)."""

    reference: nn.Module
    protected: nn.Module
    profile: dict[str, torch.Tensor]  # per-neuron maxima of every site
    lower: dict[str, torch.Tensor]  # per-neuron minima of the sites with a lower bound
    clean_val_acc: float | None  # of the reference, on the validation data (None: none given)
    protection: str
    granularity: str
    stage: str  # the bounds stage this protection config runs (bounds_stages.py)
    bounds_info: dict = field(default_factory=dict)  # post-training history, or searched thresholds
    train_info: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        return self.protected

    @property
    def clean_val_accuracy(self) -> float | None:
        return self.clean_val_acc


def protection_config(name: str, **overrides) -> dict:
    """The settings of protection ``name``: conf/protection/<name>.yaml (where the defaults live)
    with ``overrides`` on top, checked by the protection's own check."""
    entry = PROTECTIONS[name]
    node = group_config("protection", entry.name)
    for key, value in overrides.items():
        if value is not None:
            node[key] = {**node.get(key, {}), **value} if isinstance(value, Mapping) else value
    entry.check(node)
    return node


def prepare(model: nn.Module, protection: Mapping, profile: Callable[[nn.Module], Profile], *,
            fold: bool = True, clean_val: Callable[[nn.Module], float] | None = None,
            device: torch.device | str | None = None, **options: Any) -> Prepared:
    """Fold BatchNorm (when ``fold``), profile (``profile(model) -> (maxima, minima)``), measure the
    reference on validation data (``clean_val``) and protect a copy with ``protection`` (a
    protection config node: ``name``, ``granularity`` and the protection's own keys); ``options``
    go to the bounded activations over the ones the config gives. ``model`` is not changed."""
    entry = PROTECTIONS[protection["name"]]
    reference = copy.deepcopy(model).eval()
    if fold:
        fold_batchnorm(reference)
    if device is not None:
        reference = reference.to(device)
    maxima, minima = profile(reference)
    clean_val_acc = clean_val(reference) if clean_val is not None else None
    granularity = protection.get("granularity") or entry.default_granularity
    kwargs = {**entry.options(protection, list(maxima)), **options}
    protected = protect_model(copy.deepcopy(reference), entry.name, granularity, maxima, lower=minima, **kwargs)
    return Prepared(reference, protected, maxima, minima, clean_val_acc, entry.name, granularity,
                    entry.bounds_stage_for(protection))


def check_needs(protection: str, stage_name: str, given: set[str]) -> None:
    """A one-line error, before any work, when a bounds stage lacks what it reads."""
    stage = BOUNDS_STAGES[stage_name]
    missing = [need for need in stage.needs if need not in given]
    if missing:
        raise ValueError(f"{protection}'s bounds stage ({stage.name}: {stage.summary}) needs "
                         f"{' and '.join(missing)}: pass {', '.join(NEED_ARGUMENTS[m] for m in missing)}")


#: how a caller of the API provides what a bounds stage needs
NEED_ARGUMENTS = {"train": "train_loader", "val": "val_loader", "reference": "reference"}


def run_bounds_stage(prepared: Prepared, job: BoundsJob) -> dict:
    """Run the protection's bounds stage on ``prepared.protected`` in place; returns its info."""
    prepared.bounds_info = BOUNDS_STAGES[prepared.stage].run(job)
    return prepared.bounds_info


__all__ = ["NEED_ARGUMENTS", "Prepared", "check_needs", "prepare", "protection_config", "run_bounds_stage"]
