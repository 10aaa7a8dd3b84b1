"""``model=timm``: any timm classifier (an optional extra: ``pip install 'fitact-pipeline[timm]'``).

``model.pretrained``: false (timm's own random initialisation), true (timm's own downloader, from the
Hugging Face hub or the weights' URL, cached by the hub), or a state-dict file (timm loads it through
its ``pretrained_cfg_overlay=dict(file=...)`` path). timm itself drops the classifier of pretrained
weights when the class count differs, so the head is a fresh one then.
"""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ..checks import fail
from ..registry import ConfigError
from .sources import ModelSource, register_source, unknown_arch, weights_file

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
    if isinstance(pretrained, str):
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file(pretrained, "model.pretrained"))}
    try:
        return timm.create_model(arch, pretrained=bool(pretrained), num_classes=num_classes, in_chans=in_channels,
                                 **kwargs)
    except TypeError as exc:
        raise ConfigError(f"model.kwargs={dict(cfg.get('kwargs') or {})!r} is not allowed for timm {arch}: {exc}") from None
    except (OSError, RuntimeError, ValueError, KeyError) as exc:  # no network; a file that does not match
        reason = str(exc).replace("\n", " ")[:300] if str(exc) else type(exc).__name__
        raise ConfigError(f"model.pretrained={pretrained!r} could not be loaded into timm {arch}: {reason}") from None


register_source(ModelSource(
    "timm", "any timm classifier: `model.arch`, `model.pretrained` (true, false or a state-dict file), "
    "`model.kwargs`", ("arch", "pretrained", "kwargs"), check, build, install=INSTALL))
