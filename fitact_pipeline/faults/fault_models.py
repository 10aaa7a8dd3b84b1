"""The fault-model registry: one name -> one ``FaultModel`` (DESIGN.md §2.1, §2.6).

A fault model builds, for a protected model and the ``faults`` config, an injector whose
``inject(rate, seed, trial)`` applies trial ``trial``'s faults for the duration of a ``with`` block
and whose ``fault_space`` describes what can be hit. The campaign (campaign.py) only uses that
interface, so every fault model runs in every campaign and pairs across protections the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from ..checks import check_keys, expect_bool, expect_list, expect_str_item, fail
from ..registry import Registry
from .formats import FORMATS
from .injector import FaultInjector
from .space import check_targets


def injector_kwargs(faults: Mapping) -> dict[str, Any]:
    """FaultInjector's arguments from a ``faults`` config node."""
    return {"fmt": faults["fmt"], "word_bits": faults["word_bits"], "frac_bits": faults["frac_bits"],
            "targets": tuple(faults["targets"]), "include": tuple(faults["include"]),
            "exclude": tuple(faults["exclude"])}


FAULTS_KEYS = ("model", "fmt", "word_bits", "frac_bits", "targets", "include", "exclude", "fold_batchnorm")


def check_faults_config(faults: Mapping) -> None:
    """A one-line ConfigError for a bad ``faults`` value, before any work: the fault model, the
    format and the target kinds are checked by their registries."""
    check_keys(faults, "faults", FAULTS_KEYS)
    FAULT_MODELS.check("faults.model", faults.get("model"))
    FORMATS.check("faults.fmt", faults.get("fmt")).check(faults.get("word_bits"), faults.get("frac_bits"))
    targets = expect_list(faults.get("targets"), "faults.targets", expect_str_item)
    check_targets(targets, faults["fmt"])
    for key in ("include", "exclude"):
        expect_list(faults.get(key, []), f"faults.{key}", expect_str_item)
    expect_bool(faults.get("fold_batchnorm", True), "faults.fold_batchnorm")
    if "batchnorm" in targets and faults.get("fold_batchnorm", True):
        fail("faults.targets", "batchnorm", "BatchNorm is folded (faults.fold_batchnorm=true): "
             "set faults.fold_batchnorm=false to put BatchNorm in the fault space")


@dataclass(frozen=True)
class FaultModel:
    name: str
    build: Callable[[nn.Module, Mapping], Any]  # (model, faults config) -> injector
    summary: str
    persistent: bool = True  # a trial's faults stay for every pass of its evaluation (memory faults)


FAULT_MODELS: Registry[FaultModel] = Registry("fault model")
FAULT_MODELS.register("memory", FaultModel(
    "memory", lambda model, faults: FaultInjector(model, **injector_kwargs(faults)),
    "persistent bit flips in stored parameters, each bit with probability = the rate"))
