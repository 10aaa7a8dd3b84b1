"""``model=timm``: any timm classifier (an optional extra: ``pip install 'fitact-pipeline[timm]'``).

``model.pretrained``: false (timm's own random initialisation), true (timm's own downloader, from the
Hugging Face hub or the weights' URL, cached by the hub; timm drops the classifier of the pretrained
weights when the class count differs, so the head is a fresh one then), or a state-dict file, loaded
as torchvision's are: every tensor must match except a head of another class count (timm's own file
path loads leniently whenever the class count differs, so a wrong file would pass unnoticed).
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..checks import fail
from ..registry import ConfigError
from .sources import ModelSource, load_matching, load_state_file, register_source, unknown_arch, weights_file

INSTALL = "pip install 'fitact-pipeline[timm]'  (or: pip install timm)"


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model=timm needs the timm package, which is not installed: {INSTALL}") from None
    return timm


def check(cfg: Mapping) -> None:
    timm = _timm()
    arch = cfg.get("arch")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise unknown_arch("timm", arch, timm.list_models())
    pretrained = cfg.get("pretrained", False)
    if isinstance(pretrained, bool):
        if pretrained and not timm.is_model_pretrained(arch):
            fail("model.pretrained", pretrained, f"timm has no pretrained weights for {arch}; use false or a file")
    elif not isinstance(pretrained, str) or weights_file(pretrained, "model.pretrained") is None:
        fail("model.pretrained", pretrained, "expected true, false or the path of a state-dict file")


def build(cfg: Mapping, num_classes: int, in_channels: int) -> nn.Module:
    timm = _timm()
    arch, pretrained, kwargs = cfg["arch"], cfg.get("pretrained", False), dict(cfg.get("kwargs") or {})
    try:
        model = timm.create_model(arch, pretrained=pretrained is True, num_classes=num_classes, in_chans=in_channels,
                                  **kwargs)
        if isinstance(pretrained, str):
            file = weights_file(pretrained, "model.pretrained")
            load_matching(model, load_state_file(file, "model.pretrained"), f"timm {arch}", file, "model.pretrained")
        return model
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"model.kwargs={dict(cfg.get('kwargs') or {})!r} is not allowed for timm {arch}: {exc}") from None
    except (OSError, RuntimeError, ValueError, KeyError) as exc:  # no network; a file that does not match
        reason = str(exc).replace("\n", " ")[:300] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.pretrained={pretrained!r} could not be loaded into timm {arch}: {reason}") from None


register_source(ModelSource(
    "timm", "any timm classifier: `model.arch`, `model.pretrained` (true, false or a state-dict file), "
    "`model.kwargs`", ("arch", "pretrained", "kwargs"), check, build, install=INSTALL))
