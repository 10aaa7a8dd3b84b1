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

from ..registry import Registry
from .injector import FaultInjector


def injector_kwargs(faults: Mapping) -> dict[str, Any]:
    """FaultInjector's arguments from a ``faults`` config node."""
    return {"fmt": faults["fmt"], "word_bits": faults["word_bits"], "frac_bits": faults["frac_bits"],
            "targets": tuple(faults["targets"]), "include": tuple(faults["include"]),
            "exclude": tuple(faults["exclude"])}


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
