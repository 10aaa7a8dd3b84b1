"""Neuron-wise bounds where a vulnerability map says faults hurt most, layer-wise elsewhere.

FitAct bounds every neuron; ProAct bounds neurons at the last site only, by a fixed rule. Here the
vulnerability map of the stored parameters (faults/vulnerability.py) chooses: each activation site
bounds the outputs of the convolution/linear layers since the previous site (module order, the
forward order of sequential models), so a site's score is the probability that one uniformly drawn
fault of the fault space lands in those layers and changes a prediction:

    score(site) = sum over the site's layer tensors t of  words(t) / words(all) * mean_b P(SDC | t, b).

Sites are taken by score, highest first, while their extra bound values (neurons - 1 each: a
neuron-wise site stores one bound per neuron where a layer-wise one stores one) fit in the
``budget``; the rest stay layer-wise. With the budget of ProAct's last site, the choice and ProAct
cost the same bound memory.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from torch import nn

from ..layer_types import CONV_LINEAR
from .activations import kind_of
from .bounded import BoundedReLU


def site_layers(model: nn.Module) -> dict[str, list[str]]:
    """{site: the conv/linear layers (module names) whose outputs it bounds}: those since the
    previous site in module order. Layers after the last site (the classifier) belong to none."""
    out, pending = {}, []
    for name, module in model.named_modules():
        if isinstance(module, CONV_LINEAR):
            pending.append(name)
        elif name and (isinstance(module, BoundedReLU) or kind_of(module) is not None):
            out[name], pending = pending, []
    return out


def site_scores(vmap, model: nn.Module) -> dict[str, float]:
    """score(site) (module docstring) from a VulnerabilityMap of the model's stored parameters."""
    words = {t["name"]: t["elements"] for t in vmap.fault_space.get("tensors", [])}
    total = sum(words.values())
    tensors, _, sdc = vmap.matrix("sdc")
    mean_sdc = dict(zip(tensors, np.nanmean(sdc, axis=1)))
    return {site: sum(words[t] / total * mean_sdc[t] for layer in layers for t in (f"{layer}.weight", f"{layer}.bias")
                      if t in mean_sdc)
            for site, layers in site_layers(model).items()}


def choose_sites(scores: Mapping[str, float], neurons: Mapping[str, int], budget: int) -> dict[str, str]:
    """{site: "neuron"} for the highest-scoring sites whose extra bounds (neurons - 1) fit in ``budget``."""
    chosen, left = {}, int(budget)
    for site in sorted(scores, key=lambda s: (-scores[s], s)):
        extra = int(neurons[site]) - 1
        if 0 < extra <= left:
            chosen[site] = "neuron"
            left -= extra
    return chosen


def bound_memory(neurons: Mapping[str, int], granularity: Mapping[str, str]) -> int:
    """Bound values stored: a neuron-wise site one per neuron, a layer-wise site one."""
    return sum(int(n) if granularity.get(site) == "neuron" else 1 for site, n in neurons.items())
