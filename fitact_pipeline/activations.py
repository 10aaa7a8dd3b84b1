"""Activation kinds: the activations g a site may compute, and what their bounded forms need to know
of each (docs/protections.md, "Bounded forms of other activations"; DESIGN.md §2.8).

``ACTIVATIONS`` maps a kind's name to an ``ActivationKind``: the ``nn`` modules (and third-party
classes) that compute it, its functional forms (torch.fx turns each call into a module of the kind),
g itself, whether it gets a lower bound, and its natural cap (ReLU6: 6). Sites, profiling, the
bounded activations and the docs' table read this registry; nothing else lists activation kinds.

Gates (Sigmoid, Tanh, Softmax) are deliberately absent and are not sites; ``UNSUPPORTED`` lists the
activations that have no bounded form, which a model may not contain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .registry import Registry


@dataclass(frozen=True)
class ActivationKind:
    """One activation g. ``apply(x, settings, inplace)`` computes g(x) (into x when ``inplace`` and
    the kind can); ``settings`` are the values that parametrise g, read from a module's attributes
    (``settings``) and parameters (``parameters``: PReLU's slope, which the bounded module keeps as
    a parameter of the same name). ``saturates``: g maps an infinite input to a finite value
    (relu6(inf) = 6, elu(-inf) = -alpha), so the hard forms must test x itself for finiteness;
    for the other kinds g(±inf) is ±inf or NaN, which the bound comparisons already reject."""

    name: str
    summary: str  # g(x), for the docs
    modules: tuple[type[nn.Module], ...]
    apply: Callable[[torch.Tensor, Mapping[str, Any], bool], torch.Tensor]
    functions: tuple = ()  # functional forms; the module class takes the call's arguments after the input
    settings: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()
    lower: bool = False  # unbounded (or bounded only by a constant) below: gets a lower bound too
    cap: float | None = None  # natural upper bound: the bound starts at min(profiled max, cap)
    floor: Callable[[Mapping[str, Any]], float] | None = None  # natural lower bound (ELU: -alpha)
    saturates: bool = False
    # third-party classes computing this kind: "module.QualName" -> their settings
    foreign: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def settings_of(self, module: nn.Module) -> dict[str, Any]:
        """The plain settings of a module of this kind (parameters excluded)."""
        name = f"{type(module).__module__}.{type(module).__qualname__}"
        if name in self.foreign:
            return dict(self.foreign[name])
        return {s: getattr(module, s) for s in self.settings}


ACTIVATIONS: Registry[ActivationKind] = Registry("activation kind")


def register_activation(kind: ActivationKind) -> ActivationKind:
    return ACTIVATIONS.register(kind.name, kind)


def _timm(*names: str, **settings) -> dict[str, dict]:
    return {f"timm.layers.activations{suffix}.{n}": settings for n in names for suffix in ("", "_me")}


for _kind in (
    ActivationKind("relu", "max(0, x)", (nn.ReLU,), lambda x, s, i: torch.relu_(x) if i else torch.relu(x),
                   (F.relu, torch.relu, torch.relu_, getattr(F, "relu_", F.relu))),
    ActivationKind("relu6", "min(max(0, x), 6)", (nn.ReLU6,), lambda x, s, i: F.relu6(x, i), (F.relu6,), cap=6.0,
                   saturates=True),
    ActivationKind("leaky_relu", "x if x >= 0 else s x (slope s)", (nn.LeakyReLU,),
                   lambda x, s, i: F.leaky_relu(x, s["negative_slope"], i), (F.leaky_relu,), ("negative_slope",),
                   lower=True),
    ActivationKind("prelu", "x if x >= 0 else w x (learned slope w, kept as parameter `weight`)", (nn.PReLU,),
                   lambda x, s, i: F.prelu(x, s["weight"]), parameters=("weight",), lower=True),
    ActivationKind("elu", "x if x > 0 else alpha (exp(x) - 1)", (nn.ELU,), lambda x, s, i: F.elu(x, s["alpha"], i),
                   (F.elu,), ("alpha",), lower=True, floor=lambda s: -float(s["alpha"]), saturates=True),
    ActivationKind("silu", "x sigmoid(x) (min -0.278)", (nn.SiLU,), lambda x, s, i: F.silu(x, i), (F.silu,),
                   foreign=_timm("Swish", "SwishMe")),
    ActivationKind("gelu", "x Phi(x), exact or tanh approximation (min -0.170)", (nn.GELU,),
                   lambda x, s, i: F.gelu(x, approximate=s["approximate"]), (F.gelu,), ("approximate",),
                   foreign={**_timm("GELU", approximate="none"), **_timm("GELUTanh", approximate="tanh")}),
    ActivationKind("hardswish", "x relu6(x + 3) / 6 (min -0.375)", (nn.Hardswish,),
                   lambda x, s, i: F.hardswish(x, i), (F.hardswish,), foreign=_timm("HardSwish", "HardSwishMe")),
    ActivationKind("hardsigmoid", "relu6(x + 3) / 6", (nn.Hardsigmoid,), lambda x, s, i: F.hardsigmoid(x, i),
                   (F.hardsigmoid,), cap=1.0, saturates=True, foreign=_timm("HardSigmoid", "HardSigmoidMe")),
    ActivationKind("mish", "x tanh(softplus(x)) (min -0.309)", (nn.Mish,), lambda x, s, i: F.mish(x, i), (F.mish,),
                   foreign=_timm("Mish", "MishMe")),
):
    register_activation(_kind)

# Activations without a bounded form: a model containing one is refused (a protection that left
# them unbounded would overstate its resilience). Checked after the kinds (ReLU6 is a Hardtanh).
UNSUPPORTED = (nn.Hardtanh, nn.RReLU, nn.SELU, nn.CELU, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Hardshrink,
               nn.Softshrink, nn.Threshold, nn.LogSigmoid, nn.GLU)
UNSUPPORTED_FOREIGN = tuple(_timm("QuickGELU", "HardMish", "HardMishMe"))
UNSUPPORTED_FUNCTIONS = {F.hardtanh: "hardtanh", F.rrelu: "rrelu", F.selu: "selu", F.celu: "celu",
                         F.softplus: "softplus", F.softsign: "softsign", F.tanhshrink: "tanhshrink",
                         F.hardshrink: "hardshrink", F.softshrink: "softshrink", F.threshold: "threshold",
                         F.logsigmoid: "logsigmoid", F.glu: "glu", torch.selu: "selu", torch.celu: "celu"}


class BoundsAKind:
    """Marks a module that bounds an activation kind (bounded.BoundedReLU): its ``kind`` names the
    kind. Declared here, below bounded.py, so that kind_of needs no import of it."""

    kind: str


def kind_of(module: nn.Module) -> ActivationKind | None:
    """The kind a module computes (a bounded activation: the kind it bounds), or None."""
    if isinstance(module, BoundsAKind):
        return ACTIVATIONS[module.kind]
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    for _, kind in ACTIVATIONS.items():
        if isinstance(module, kind.modules) or name in kind.foreign:
            return kind
    return None


def kind_of_function(target) -> ActivationKind | None:
    for _, kind in ACTIVATIONS.items():
        if any(target is f for f in kind.functions):
            return kind
    return None


def unsupported(module: nn.Module) -> bool:
    name = f"{type(module).__module__}.{type(module).__qualname__}"
    return kind_of(module) is None and (isinstance(module, UNSUPPORTED) or name in UNSUPPORTED_FOREIGN)


__all__ = ["ACTIVATIONS", "ActivationKind", "BoundsAKind", "UNSUPPORTED", "UNSUPPORTED_FUNCTIONS", "kind_of", "kind_of_function",
           "register_activation", "unsupported"]
