"""``model=torchvision``: any torchvision classifier, by builder name (``mobilenet_v2``) or class name
(``VisionTransformer``, whose arguments then come from ``model.kwargs``).

``model.weights``: null (the library's own random initialisation), a weights name of the builder
(``IMAGENET1K_V1``, ``DEFAULT`` or the full ``MobileNet_V2_Weights.IMAGENET1K_V1``), which
torchvision's own downloader fetches (``torch.hub``; cached under ``TORCH_HOME``), or a state-dict
file. The head is replaced when the dataset's class count differs from the weights'.
"""
from __future__ import annotations

import inspect
from typing import Mapping

from torch import nn

from ..checks import expect_str, fail
from ..registry import ConfigError
from .sources import ModelSource, load_matching, load_state_file, register_source, replace_head, unknown_arch, \
    weights_file


def _models():
    import torchvision.models as tvm  # slow to import (every architecture): only for model=torchvision

    return tvm


def builders() -> list[str]:
    """torchvision's classification builders (detection, segmentation, video models excluded)."""
    tvm = _models()
    return tvm.list_models(module=tvm)


def classes() -> list[str]:
    tvm = _models()
    return sorted(n for n in dir(tvm) if inspect.isclass(getattr(tvm, n)) and issubclass(getattr(tvm, n), nn.Module))


def _weights_enum(arch: str, value: str):
    """The weights enum member a name stands for: ``DEFAULT``, ``IMAGENET1K_V1`` or a full name."""
    tvm = _models()
    enum = tvm.get_model_weights(arch)
    member = value.rpartition(".")[2]
    if value.count(".") == 1 and value.partition(".")[0] != enum.__name__:
        fail("model.weights", value, f"those are not weights of {arch}; {arch} has: "
             + ", ".join(f"{enum.__name__}.{m}" for m in enum.__members__))
    if member not in enum.__members__:
        fail("model.weights", value, f"{arch} has the weights {', '.join(enum.__members__)}, a state-dict file, "
             "or null (random initialisation)")
    return enum[member]


def _download(make, enum, kwargs: dict) -> nn.Module:
    """torchvision's own downloader (torch.hub: cached under TORCH_HOME, hash checked)."""
    try:
        return make(weights=enum, **kwargs)
    except (OSError, RuntimeError) as exc:  # no network, a corrupt download
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.weights='{enum}' could not be loaded ({reason}); offline, give a state-dict "
                          "file (model.weights=/path/to/weights.pth) or null") from None


def check(cfg: Mapping) -> None:
    arch = cfg.get("arch")
    expect_str(arch, "model.arch")
    if arch not in builders() and arch not in classes():
        raise unknown_arch("torchvision", arch, builders() + classes())
    weights = cfg.get("weights")
    if weights is None:
        return
    expect_str(weights, "model.weights")
    if weights_file(weights, "model.weights") is None:
        if arch not in builders():
            fail("model.weights", weights, f"{arch} is a class, not a builder: give a state-dict file or null")
        _weights_enum(arch, weights)


def build(cfg: Mapping, num_classes: int, in_channels: int) -> nn.Module:
    arch, weights, kwargs = cfg["arch"], cfg.get("weights"), dict(cfg.get("kwargs") or {})
    if in_channels != 3:
        raise ConfigError(f"model=torchvision builds 3-channel models; the dataset has {in_channels} channel(s) "
                          "(set dataset.grayscale=false)")
    tvm = _models()
    make = tvm.get_model_builder(arch) if arch in builders() else getattr(tvm, arch)
    try:
        if weights is not None and weights_file(weights, "model.weights") is None:
            enum = _weights_enum(arch, weights)
            model = _download(make, enum, kwargs)
            return replace_head(model, len(enum.meta["categories"]), num_classes)
        model = make(num_classes=num_classes, **kwargs)
    except TypeError as exc:  # an argument the builder does not take
        raise ConfigError(f"model.kwargs={kwargs!r} is not allowed for torchvision {arch}: {exc}") from None
    if weights is not None:
        file = weights_file(weights, "model.weights")
        load_matching(model, load_state_file(file), f"torchvision {arch}", file)
    return model


register_source(ModelSource(
    "torchvision", "any torchvision classifier: `model.arch` (builder or class name), `model.weights` (a weights "
    "name, a state-dict file or null), `model.kwargs`", ("arch", "weights", "kwargs"), check, build,
    install="a dependency of the project"))
