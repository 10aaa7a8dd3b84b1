"""Model registry: one name -> one builder.

Models of other libraries (``model=torchvision``, ``model=timm``) come from the sources of
``sources.py``; ``model_from_config`` builds either kind from a ``model`` config.

Every builder has the signature ``builder(num_classes, in_channels, width) -> nn.Module`` and obeys the
activation-site convention of docs/architecture.md: each ReLU call site is its own ``nn.ReLU`` module
(never ``F.relu``, never a module called twice), so protection can replace sites one by one while
every other tensor keeps its name. The ReLUs are in place, as in torchvision: no activation input is
needed after its ReLU, and on CPU an out-of-place activation is a fresh allocation whose pages fault
in on first write (docs/protections.md, "Overheads"). The bounded activations that
replace them inherit the flag, so protected and unprotected models are timed on equal terms.
"""

from __future__ import annotations

import math
from typing import Callable

from torch import nn

from ..checks import expect_number
from ..registry import ConfigError, Registry

Builder = Callable[[int, int, float], nn.Module]
MODELS: Registry[Builder] = Registry("model")


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator that adds a builder to MODELS under ``name``."""
    def decorator(builder: Builder) -> Builder:
        return MODELS.register(name, builder)

    return decorator


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier; never below 1 so tiny widths still build."""
    return max(1, int(round(channels * width)))


def _check_width(width) -> float:
    try:
        value = float(width)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"bad model width {width!r}; width must be a finite number > 0 (1.0 = paper size)")
    return value


def check_model_config(cfg) -> None:
    """A one-line ConfigError for a bad ``model`` value, before any work: a registered model, or a
    source (torchvision, timm) with its own keys."""
    name = cfg.get("name")
    if isinstance(name, str) and name in SOURCES:
        return check_source_config(cfg)
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"model.name={name!r} is not allowed; choose one of: {', '.join([*MODELS, *SOURCES])}")
    expect_number(cfg.get("width", 1.0), "model.width", 0, low_open=True)


def model_from_config(cfg, num_classes: int, in_channels: int = 3, seed: int = 0) -> nn.Module:
    """The model a ``model`` config describes: a registered builder (``name``, ``width``), or a
    source's model built (weights loaded, head replaced) with its new parameters drawn from ``seed``."""
    if cfg["name"] in SOURCES:
        return build_from_source(cfg, num_classes, in_channels, seed)
    return build_model(cfg["name"], num_classes, in_channels, cfg.get("width", 1.0))


def owns_init(cfg) -> bool:
    """Whether the model comes initialised (a source: the library's initialisation or pretrained
    weights), so training must not re-initialise it."""
    return cfg["name"] in SOURCES


def model_tag(cfg) -> str:
    """The run tag ``model``: the registry name, or a source model's label (its architecture)."""
    return model_label(cfg) if cfg["name"] in SOURCES else str(cfg["name"])


def build_model(name: str, num_classes: int, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Build a registered model for ``in_channels``-channel images and ``num_classes`` classes."""
    builder = MODELS[name]
    if int(num_classes) < 1 or int(in_channels) < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    return builder(int(num_classes), int(in_channels), _check_width(width))


# Importing the family modules registers their builders (they import MODELS from here).
from . import alexnet, resnet, small_cnn, vgg  # noqa: E402,F401
from .sources import SOURCES, build_from_source, check_source_config, model_label  # noqa: E402

__all__ = ["MODELS", "build_model", "check_model_config", "model_from_config", "model_tag", "owns_init",
           "register_model", "scaled"]
