"""Turn a trained ReLU model into a protected one (DESIGN.md §2.2).

Order of use (pipeline.py)::

    fold_batchnorm(model)                         # what a deployed model stores
    model = split_activation_sites(model)         # every ReLU call site its own module (no-op for ours)
    profile = profile_activations(model, loader, num_images)
    model = protect_model(model, "fitact", "neuron", profile)

``protect_model`` and ``profile_activations`` split sites themselves, so calling
``split_activation_sites`` first is only needed to get the final module names early. Always use the
returned model: splitting reused modules or functional relu calls returns a ``torch.fx.GraphModule``.
Every other parameter keeps its qualified name, which is what pairs fault maps across protections.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .activations import GRANULARITIES, BoundedReLU, make_activation, reduce_profile

PROTECTIONS = ("none", "ranger", "clipact", "gbrelu", "fitact")

# Activation modules the rewriter cannot bound: a model with any of them is refused, because a
# protection that silently leaves some activations unbounded would overstate its resilience.
UNSUPPORTED_ACTIVATIONS = (
    nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.LogSigmoid, nn.GLU,
)
_RELU_FUNCTIONS = {F.relu, torch.relu, torch.relu_, getattr(F, "relu_", None)} - {None}
_CONV_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------
def _fold_pair(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """Fold ``bn`` (eval statistics) into ``layer``'s weight and bias, in place."""
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
            1.0 / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        w = layer.weight
        # output features are dim 0 of the weight for Conv*d and Linear
        w.mul_(scale.reshape(-1, *([1] * (w.dim() - 1))).to(w.dtype))
        old_bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
        new_bias = (old_bias - bn.running_mean) * scale + shift
        if layer.bias is None:
            layer.bias = nn.Parameter(new_bias.to(w.dtype))
        else:
            layer.bias.copy_(new_bias)


def _foldable(bn: nn.Module) -> bool:
    # without running statistics BN uses batch statistics even in eval mode: not a fixed affine map
    return isinstance(bn, _BATCHNORM) and bn.track_running_stats and bn.running_mean is not None


def _bn_pairs_fx(model: nn.Module) -> list[tuple[str, str]]:
    """(layer, bn) module names where the BN's only input is the layer's output, used nowhere else."""
    graph = fx.symbolic_trace(model).graph
    mods = dict(model.named_modules())
    pairs, calls = [], {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not _foldable(mods[node.target]):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(mods[src.target], _CONV_LINEAR)
                and len(src.users) == 1 and calls[src.target] == 1 and calls[node.target] == 1):
            pairs.append((src.target, node.target))
    return pairs


def _bn_pairs_sequential(model: nn.Module) -> list[tuple[str, str]]:
    """Fallback for models fx cannot trace: adjacent (layer, BN) children of an nn.Sequential only,
    the one container whose registration order is its call order."""
    pairs = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            kids = list(m.named_children())
            for (n1, a), (n2, b) in zip(kids, kids[1:]):
                if isinstance(a, _CONV_LINEAR) and _foldable(b):
                    pre = f"{name}." if name else ""
                    pairs.append((pre + n1, pre + n2))
    return pairs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv*d/Linear into it; the BN becomes nn.Identity.

    Pairs are found by torch.fx dataflow (exact for any traceable model: the BN must consume the
    layer's output and nothing else may use that output); untraceable models fall back to adjacent
    children of nn.Sequential. Exact in eval mode (up to float rounding). In place; returns ``model``.
    """
    try:
        pairs = _bn_pairs_fx(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: use the conservative fallback
        pairs = _bn_pairs_sequential(model)
    for layer_name, bn_name in pairs:
        _fold_pair(model.get_submodule(layer_name), model.get_submodule(bn_name))
        model.set_submodule(bn_name, nn.Identity())
    return model


# --------------------------------------------------------------------------------------------------
# Activation sites
# --------------------------------------------------------------------------------------------------
def _is_site(m: nn.Module) -> bool:
    return isinstance(m, (nn.ReLU, BoundedReLU))


def _check_supported(model: nn.Module) -> None:
    bad = [f"{n} ({type(m).__name__})" for n, m in model.named_modules() if isinstance(m, UNSUPPORTED_ACTIVATIONS)]
    if bad:
        raise ValueError(f"model has activations the protections cannot bound: {', '.join(bad)}")


def activation_sites(model: nn.Module) -> list[str]:
    """Names of the ReLU (or already bounded) modules, in registration order.

    Raises a one-line ValueError naming any unsupported activation module (GELU, ReLU6, ...).
    Reused modules and functional relu calls are not visible here; ``split_activation_sites``
    gives them their own modules, and ``profile_activations`` refuses a module called twice.
    """
    _check_supported(model)
    return [n for n, m in model.named_modules() if _is_site(m) and n]


def _site_name(parent: nn.Module, base: str) -> str:
    # deterministic: an existing nn.ReLU of that name is one an earlier split created (reuse it);
    # anything else under that name is the model's own attribute, so step aside
    while hasattr(parent, base) and not isinstance(getattr(parent, base), nn.ReLU):
        base += "_split"
    return base


def split_activation_sites(model: nn.Module) -> nn.Module:
    """Give every ReLU call site its own module; returns ``model`` itself when nothing to split.

    With torch.fx: the 2nd, 3rd... call of a reused nn.ReLU ``a.relu`` becomes a new nn.ReLU
    ``a.relu_1``, ``a.relu_2`` (registered on the same parent), and each ``F.relu``/``torch.relu``/
    ``x.relu()`` call becomes ``<parent>.relu_fn_<i>`` where parent is the module whose forward made
    the call. Names are a pure function of the graph, so repeated splits (profiling, then
    protection, in every protection's copy) agree. A model that needs splitting but cannot be traced
    raises ValueError naming the reason.
    """
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001
        # nothing to split is the common case (our models); profiling's hooks catch reuse anyway
        if not any(isinstance(m, nn.ReLU) for m in model.modules()):
            return model
        model._fitact_untraceable = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return model
    mods = dict(model.named_modules())
    seen: dict[str, int] = {}
    changed = False
    fn_count: dict[str, int] = {}
    for node in gm.graph.nodes:
        parent_name = None
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.ReLU):
            seen[node.target] = seen.get(node.target, 0) + 1
            if seen[node.target] == 1:
                continue
            parent_name, _, base = node.target.rpartition(".")
            base = f"{base}_{seen[node.target] - 1}"
            inplace = mods[node.target].inplace
        elif (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or \
                (node.op == "call_method" and node.target in ("relu", "relu_")):
            stack = node.meta.get("nn_module_stack") or {}
            parent_name = list(stack.values())[-1][0] if stack else ""
            if isinstance(parent_name, tuple):
                parent_name = parent_name[0]
            fn_count[parent_name] = fn_count.get(parent_name, 0) + 1
            base = f"relu_fn_{fn_count[parent_name]}"
            inplace = bool(node.kwargs.get("inplace", False)) or node.target in ("relu_",) or \
                node.target is torch.relu_ or node.target is getattr(F, "relu_", None)
        else:
            continue
        parent = model.get_submodule(parent_name) if parent_name else model
        name = _site_name(parent, base)
        if not isinstance(getattr(parent, name, None), nn.ReLU):
            parent.add_module(name, nn.ReLU(inplace=inplace))
        full = f"{parent_name}.{name}" if parent_name else name
        with gm.graph.inserting_after(node):
            # create_node, not call_module: the new module lives on `model`, not yet on the traced copy
            new = gm.graph.create_node("call_module", full, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        changed = True
    if not changed:
        return model
    out = fx.GraphModule(model, gm.graph, class_name=type(model).__name__)
    out.graph.lint()
    out.train(model.training)
    return out


# --------------------------------------------------------------------------------------------------
# Profiling
# --------------------------------------------------------------------------------------------------
def _batches(loader):
    for batch in loader:
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


@torch.no_grad()
def profile_activations(model: nn.Module, loader, num_images: int | None = None) -> dict[str, torch.Tensor]:
    """Per-neuron maximum of every ReLU site's output over ``num_images`` images from ``loader``.

    The maximum is over the batch dimension only: the result for a site with output ``(N, C, H, W)``
    has shape ``(C, H, W)`` (``(F,)`` for ``(N, F)``). ``loader`` yields ``(images, labels)`` or
    images (a tensor also works: it is treated as one batch). Runs in eval mode and restores the
    mode. Keys are the site names of ``split_activation_sites(model)``.
    """
    _check_supported(model)
    net = split_activation_sites(model)
    sites = {n: m for n, m in net.named_modules() if _is_site(m) and n}
    if not sites:
        raise ValueError("model has no ReLU activation sites to profile")
    maxima: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name):
        def fn(_m, _inp, out):
            calls[name] = calls.get(name, 0) + 1
            m = out.detach().amax(dim=0).float()
            maxima[name] = m if name not in maxima else torch.maximum(maxima[name], m)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in sites.items()]
    was_training = net.training
    net.eval()
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    seen = 0
    try:
        for x in ([loader] if torch.is_tensor(loader) else _batches(loader)):
            if num_images is not None:
                if seen >= num_images:
                    break
                x = x[: num_images - seen]
            calls.clear()
            net(x.to(device))
            reused = sorted(n for n, c in calls.items() if c > 1)
            if reused:
                why = getattr(model, "_fitact_untraceable", "")
                raise ValueError(f"activation modules called at several sites cannot be split "
                                 f"(model not traceable by torch.fx{': ' + why if why else ''}): {', '.join(reused)}")
            seen += x.shape[0]
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if seen == 0:
        raise ValueError("profiling saw no images")
    never = [n for n in sites if n not in maxima]
    if never:
        raise ValueError(f"activation sites never called during profiling: {', '.join(never)}")
    return {n: maxima[n].cpu() for n in sites}


# --------------------------------------------------------------------------------------------------
# Protection
# --------------------------------------------------------------------------------------------------
def protect_model(model: nn.Module, protection: str, granularity: str = "layer",
                  profile: dict[str, torch.Tensor] | None = None, k: float = 20.0, hard: bool = True,
                  gbrelu_bound=None, fused: bool = False) -> nn.Module:
    """Replace every ReLU site with the bounded activation of ``protection``; returns the model.

    The bound of a site is ``profile[site]`` reduced to ``granularity`` by a max (DESIGN §2.2).
    ``gbrelu`` ignores the profile and uses ``gbrelu_bound`` (a float for every layer, or a dict
    site -> float) at layer granularity. ``hard`` picks the FitReLU inference form (FitReLU-Naive);
    ``fused`` runs inference of the hard forms through one compiled kernel (activations.py).
    """
    if protection not in PROTECTIONS:
        raise ValueError(f"unknown protection {protection!r}; choose one of: {', '.join(PROTECTIONS)}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")
    _check_supported(model)
    model = split_activation_sites(model)
    if protection == "none":
        return model
    sites = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n]
    if protection == "gbrelu":
        if gbrelu_bound is None:
            raise ValueError("protection 'gbrelu' needs gbrelu_bound (a float or a dict site -> float)")
        granularity = "layer"
    else:
        if profile is None:
            raise ValueError(f"protection {protection!r} needs an activation profile")
        missing = [s for s in sites if s not in profile]
        if missing:
            raise ValueError(f"profile has no entry for activation sites: {', '.join(missing)}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for site in sites:
        if protection == "gbrelu" and isinstance(gbrelu_bound, dict) and site not in gbrelu_bound:
            continue  # GBReLU at chosen sites only (paper Fig. 1); the other sites stay ReLU
        if protection == "gbrelu":
            bound = gbrelu_bound[site] if isinstance(gbrelu_bound, dict) else gbrelu_bound
            bound = torch.as_tensor(float(bound))
        else:
            bound = reduce_profile(profile[site], granularity)
        act = make_activation(protection, bound.to(device), granularity, k=k, hard=hard,
                              inplace=model.get_submodule(site).inplace, fused=fused)
        model.set_submodule(site, act.to(device))
    return model


def bound_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """site name -> its ``bound`` parameter, for every bounded activation in the model."""
    return {n: m.bound for n, m in model.named_modules() if isinstance(m, BoundedReLU)}


def __getattr__(name):
    # the contract lists clipact_search under protect; it lives in its own module (it needs faults.py)
    if name == "clipact_search":
        from .clipact_search import clipact_search
        return clipact_search
    raise AttributeError(name)

