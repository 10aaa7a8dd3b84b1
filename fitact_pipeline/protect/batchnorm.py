"""Fold every BatchNorm that follows a convolution or linear layer into it (what a deployed model
stores, DESIGN.md §2.1): the BN becomes nn.Identity and the layer's weight and bias absorb it."""
from __future__ import annotations

import torch
from torch import fx, nn

from ..layer_types import BATCHNORM, CONV_LINEAR


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
    return isinstance(bn, BATCHNORM) and bn.track_running_stats and bn.running_mean is not None


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
        if (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(mods[src.target], CONV_LINEAR)
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
                if isinstance(a, CONV_LINEAR) and _foldable(b):
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


