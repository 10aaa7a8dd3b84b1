"""Activation sites: every activation call site its own module, so that each gets its own bound
(DESIGN.md §2.2) while every other tensor keeps its name (which pairs fault maps across protections).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .bounded import BoundedReLU

# Activation modules the rewriter cannot bound: a model with any of them is refused, because a
# protection that silently leaves some activations unbounded would overstate its resilience.
UNSUPPORTED_ACTIVATIONS = (
    nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.LogSigmoid, nn.GLU,
)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None)} - {None}


def is_site(m: nn.Module) -> bool:
    return isinstance(m, (nn.ReLU, BoundedReLU))


def check_supported(model: nn.Module) -> None:
    bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, UNSUPPORTED_ACTIVATIONS)]
    if bad:
        raise ValueError(f"model has activations the protections cannot bound: {', '.join(bad)}")


def activation_sites(model: nn.Module) -> list[str]:
    """Names of the ReLU (or already bounded) modules, in registration order.

    Raises a one-line ValueError naming any unsupported activation module (GELU, ReLU6, ...).
    Reused modules and functional relu calls are not visible here; ``split_activation_sites``
    gives them their own modules, and ``profile_activations`` refuses a module called twice.
    """
    check_supported(model)
    return [n for n, m in model.named_modules() if is_site(m) and n]


def select_sites(all_sites: list[str], chosen, what: str) -> list[str]:
    """Sites by name or by index in forward order; None = all."""
    if chosen is None:
        return all_sites
    picked = []
    for item in chosen:
        if isinstance(item, int) and -len(all_sites) <= item < len(all_sites):
            picked.append(all_sites[item])
        elif item in all_sites:
            picked.append(item)
        else:
            raise ValueError(f"{what} has {item!r}; allowed: an index below {len(all_sites)} "
                             f"or one of: {', '.join(all_sites)}")
    return picked


def _site_name(parent: nn.Module, base: str) -> str:
    # deterministic: an existing nn.ReLU of that name is one an earlier split created (reuse it);
    # anything else under that name is the model's own attribute, so step aside
    while hasattr(parent, base) and not isinstance(getattr(parent, base), nn.ReLU):
        base += "_split"
    return base


def _new_site(node, mods: dict, reuse_count: dict, fn_count: dict) -> tuple[str, str, bool] | None:
    """(parent module name, new module name, inplace) for a ReLU call that needs its own module:
    a second or later call of a reused nn.ReLU, or a functional relu call; None otherwise."""
    if node.op == "call_module" and isinstance(mods.get(node.target), nn.ReLU):
        reuse_count[node.target] = reuse_count.get(node.target, 0) + 1
        if reuse_count[node.target] == 1:
            return None
        parent_name, _, base = node.target.rpartition(".")
        return parent_name, f"{base}_{reuse_count[node.target] - 1}", mods[node.target].inplace
    functional = (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or \
        (node.op == "call_method" and node.target in ("relu", "relu_"))
    if not functional:
        return None
    stack = node.meta.get("nn_module_stack") or {}
    parent_name = list(stack.values())[-1][0] if stack else ""
    if isinstance(parent_name, tuple):
        parent_name = parent_name[0]
    fn_count[parent_name] = fn_count.get(parent_name, 0) + 1
    inplace = bool(node.kwargs.get("inplace", False)) or node.target in ("relu_",) or \
        node.target is torch.relu_ or node.target is getattr(F, "relu_", None)
    return parent_name, f"relu_fn_{fn_count[parent_name]}", inplace


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001
        # profiling's hooks catch a reused module anyway; the reason goes into their message
        if any(isinstance(m, nn.ReLU) for m in model.modules()):
            model._fitact_untraceable = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None


def split_activation_sites(model: nn.Module) -> nn.Module:
    """Give every ReLU call site its own module; returns ``model`` itself when nothing to split.

    With torch.fx: the 2nd, 3rd... call of a reused nn.ReLU ``a.relu`` becomes a new nn.ReLU
    ``a.relu_1``, ``a.relu_2`` (registered on the same parent), and each ``F.relu``/``torch.relu``/
    ``x.relu()`` call becomes ``<parent>.relu_fn_<i>`` where parent is the module whose forward made
    the call. Names are a pure function of the graph, so repeated splits (profiling, then
    protection, in every protection's copy) agree. An untraceable model is returned as it is.
    """
    gm = _trace(model)
    if gm is None:
        return model
    mods = dict(model.named_modules())
    reuse_count: dict[str, int] = {}
    fn_count: dict[str, int] = {}
    changed = False
    for node in gm.graph.nodes:
        target = _new_site(node, mods, reuse_count, fn_count)
        if target is None:
            continue
        parent_name, base, inplace = target
        parent = model.get_submodule(parent_name) if parent_name else model
        name = _site_name(parent, base)
        if not isinstance(getattr(parent, name, None), nn.ReLU):
            parent.add_module(name, nn.ReLU(inplace=inplace))
        with gm.graph.inserting_after(node):
            # create_node, not call_module: the new module lives on `model`, not yet on the traced copy
            new = gm.graph.create_node("call_module", f"{parent_name}.{name}" if parent_name else name,
                                       (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed = True
    if not changed:
        return model
    out = fx.GraphModule(model, gm.graph, class_name=type(model).__name__)
    out.graph.lint()
    out.train(model.training)
    return out
