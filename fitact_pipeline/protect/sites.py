"""Activation sites: every activation call site its own module, so that each gets its own bound
(DESIGN.md §2.2) while every other tensor keeps its name (which pairs fault maps across protections).

A site is a module of a registered activation kind (../activations.py: ReLU, ReLU6, GELU, ...) or a
bounded activation; functional calls of a kind and repeated calls of one module become modules of
their own (``split_activation_sites``). Activations without a bounded form are refused.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ..registry import ConfigError
from ..activations import ACTIVATIONS, UNSUPPORTED_FUNCTIONS, kind_of, kind_of_function, unsupported
from .bounded import BoundedReLU


class UnsupportedActivation(ConfigError):
    """A model has an activation without a bounded form (one line: what and where)."""


def is_site(m: nn.Module) -> bool:
    return isinstance(m, BoundedReLU) or kind_of(m) is not None


def _refuse(bad: list[str]) -> None:
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise UnsupportedActivation(f"model has activations the protections cannot bound: {', '.join(bad[:3])}{more}; "
                                f"bounded forms exist for: {', '.join(ACTIVATIONS)}")


def check_supported(model: nn.Module) -> None:
    bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if unsupported(m)]
    if bad:
        _refuse(bad)


def activation_sites(model: nn.Module) -> list[str]:
    """Names of the activation (or already bounded) modules, in registration order.

    Raises a one-line error naming any activation without a bounded form (Hardtanh, SELU, ...)
    and where it sits. Reused modules and functional calls are not visible here;
    ``split_activation_sites`` gives them their own modules, and ``profile_activations`` refuses a
    module called twice.
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


def _site_name(parent: nn.Module, base: str, like: nn.Module) -> str:
    # deterministic: an existing module of the same type under that name is one an earlier split
    # created (reuse it); anything else under that name is the model's own attribute, so step aside
    while hasattr(parent, base) and type(getattr(parent, base)) is not type(like):
        base += "_split"
    return base


def _parent_of(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    parent_name = list(stack.values())[-1][0] if stack else ""
    return parent_name[0] if isinstance(parent_name, tuple) else parent_name


def _module_for_call(node, kind) -> nn.Module:
    """A module of ``kind`` that computes what the functional call ``node`` computes."""
    if kind.name == "relu":
        inplace = bool(node.kwargs.get("inplace", False)) or node.target in ("relu_", torch.relu_) or \
            node.target is getattr(torch.nn.functional, "relu_", None)
        return nn.ReLU(inplace=inplace)
    args = [*node.args[1:], *node.kwargs.values()]
    if any(isinstance(a, fx.Node) for a in args):
        raise UnsupportedActivation(f"functional {kind.name} call in '{_parent_of(node) or 'the model'}' takes "
                                    "computed arguments; use an nn module with fixed settings there")
    return kind.modules[0](*node.args[1:], **node.kwargs)


def _new_site(node, mods: dict, reuse_count: dict, fn_count: dict) -> tuple[str, str, nn.Module] | None:
    """(parent module name, new module name, new module) for an activation call that needs its own
    module: a second or later call of a reused site module, or a functional call; None otherwise."""
    if node.op == "call_module" and is_site(mods.get(node.target)):
        reuse_count[node.target] = reuse_count.get(node.target, 0) + 1
        if reuse_count[node.target] == 1:
            return None
        parent_name, _, base = node.target.rpartition(".")
        orig = mods[node.target]
        new = nn.ReLU(inplace=orig.inplace) if type(orig) is nn.ReLU else copy.deepcopy(orig)
        return parent_name, f"{base}_{reuse_count[node.target] - 1}", new
    if node.op == "call_function" and node.target in UNSUPPORTED_FUNCTIONS:
        _refuse([f"{UNSUPPORTED_FUNCTIONS[node.target]} (functional call in '{_parent_of(node) or 'the model'}')"])
    kind = kind_of_function(node.target) if node.op == "call_function" else \
        (ACTIVATIONS["relu"] if node.op == "call_method" and node.target in ("relu", "relu_") else None)
    if kind is None:
        return None
    parent_name = _parent_of(node)
    # ReLU calls keep their names (relu_fn_<i>); other kinds count apart: <kind>_fn_<i>
    counter = (parent_name, kind.name)
    fn_count[counter] = fn_count.get(counter, 0) + 1
    return parent_name, f"{kind.name}_fn_{fn_count[counter]}", _module_for_call(node, kind)


class _SiteTracer(fx.Tracer):
    """Sites are leaves: a third-party activation class (timm's GELU) is one call, not its body."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_site(m) or unsupported(m) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module) -> fx.GraphModule | None:
    try:
        return fx.GraphModule(model, _SiteTracer().trace(model), class_name=type(model).__name__)
    except Exception as exc:  # noqa: BLE001
        # profiling's hooks catch a reused module anyway; the reason goes into their message
        if any(is_site(m) for m in model.modules()):
            model._fitact_untraceable = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None


def split_activation_sites(model: nn.Module) -> nn.Module:
    """Give every activation call site its own module; returns ``model`` itself when nothing to split.

    With torch.fx: the 2nd, 3rd... call of a reused site module ``a.relu`` becomes a new module
    ``a.relu_1``, ``a.relu_2`` (registered on the same parent; a copy of it for other kinds), each
    ``F.relu``/``torch.relu``/``x.relu()`` call becomes ``<parent>.relu_fn_<i>`` and each functional
    call of another kind (``F.gelu(x, approximate="tanh")``) ``<parent>.<kind>_fn_<i>`` with the
    call's settings, where parent is the module whose forward made the call. Names are a pure
    function of the graph, so repeated splits (profiling, then protection, in every protection's
    copy) agree. An untraceable model is returned as it is. A functional call of an activation
    without a bounded form is refused.
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
        parent_name, base, module = target
        parent = model.get_submodule(parent_name) if parent_name else model
        name = _site_name(parent, base, module)
        if type(getattr(parent, name, None)) is not type(module):
            parent.add_module(name, module)
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
