"""Model sources: classifiers built by a library (torchvision, timm) rather than this project's
registry (docs/training.md, "Models from torchvision and timm").

``SOURCES`` maps ``model.name`` to a ``ModelSource``: which config keys it takes, a check that
raises a one-line ConfigError before any work (unknown architecture with close matches, timm not
installed with its install line, a weights file that is missing), and a builder
``(cfg, num_classes, in_channels) -> nn.Module`` that loads the weights (a file that does not match
the architecture is a ConfigError too) and replaces the classifier head when the dataset's class
count differs. Sources initialise their models themselves (the libraries' own initialisation,
under a seeded RNG), so the baseline stage fine-tunes them instead of re-initialising.
"""
from __future__ import annotations

import difflib
import functools
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..checks import check_keys, expect_str, fail
from ..registry import ConfigError, Registry


@dataclass(frozen=True)
class ModelSource:
    name: str
    summary: str
    keys: tuple[str, ...]  # config keys besides `name`
    check: Callable[[Mapping], None]
    build: Callable[[Mapping, int, int], nn.Module]
    install: str = ""  # how to get the library, for the docs


SOURCES: Registry[ModelSource] = Registry("model source")


def register_source(source: ModelSource) -> ModelSource:
    return SOURCES.register(source.name, source)


def check_source_config(cfg: Mapping) -> None:
    source = SOURCES[cfg["name"]]
    check_keys(cfg, "model", ("name", "label", *source.keys))
    expect_str(cfg.get("label"), "model.label", allow_none=True)
    kwargs = cfg.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        fail("model.kwargs", kwargs, "expected a mapping of builder arguments, e.g. {width_mult: 0.5}")
    source.check(cfg)


def build_from_source(cfg: Mapping, num_classes: int, in_channels: int, seed: int) -> nn.Module:
    """The model of a source config, its new parameters drawn from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SOURCES[cfg["name"]].build(cfg, int(num_classes), int(in_channels))


def model_label(cfg: Mapping) -> str:
    """What runs are tagged with: ``model.label`` if set, else the architecture."""
    return str(cfg.get("label") or cfg["arch"])


def unknown_arch(what: str, arch: Any, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(arch), known, n=4, cutoff=0.5)
    hint = f"close matches: {', '.join(close)}" if close else f"{len(known)} architectures exist, e.g. {', '.join(known[:5])}"
    return ConfigError(f"model.arch={arch!r} is not allowed; {what} has no such classifier ({hint})")


def weights_file(value: Any, path: str) -> Path | None:
    """A weights value that names a file: the file (which must exist), else None (a name)."""
    text = str(value)
    looks_like_path = "/" in text or text.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(text).exists()
    if not looks_like_path:
        return None
    file = Path(text).expanduser()
    if not file.is_file():
        fail(path, value, "no such weights file; give an existing state-dict file, a weights name, or null "
             "(random initialisation)")
    _probe(str(file.resolve()), file.stat().st_mtime_ns, path)
    return file


@functools.lru_cache(maxsize=8)
def _probe(file: str, _mtime: int, path: str) -> None:
    """Read the file as the job will (memory-mapped where torch can, so preflight stays cheap):
    a file that is not a state dict is refused before any work."""
    load_state_file(Path(file), path, mmap=True)


def load_state_file(file: Path, path: str = "model.weights", mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``file``; anything else (a text file, a pickled model, a list) is a one-line
    ConfigError naming the file."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = _torch_load(file, mmap)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.load's errors for a non-weights file vary (KeyError, ...)
        reason = "" if isinstance(exc, (KeyError, EOFError, pickle.UnpicklingError)) or not str(exc) else \
            f" ({str(exc).splitlines()[0][:120]})"
        raise ConfigError(f"{path}='{file}' is not allowed; it is not a state-dict file torch can read{reason}: "
                          "give a file saved with torch.save(model.state_dict(), path) or a .safetensors file") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # a Lightning or training checkpoint
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path}='{file}' is not allowed; it holds a {type(state).__name__}, not a state dict")
    odd = [k for k, v in state.items() if not torch.is_tensor(v)]
    if odd:
        raise ConfigError(f"{path}='{file}' is not allowed; it is not a state dict: '{odd[0]}' holds a "
                          f"{type(state[odd[0]]).__name__}, not a tensor")
    return dict(state)


def _torch_load(file: Path, mmap: bool):
    if mmap:
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # an old (non-zip) torch file cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
    return torch.load(file, map_location="cpu", weights_only=True)


def find_head(model: nn.Module, num_outputs: int | None = None) -> str:
    """Name of the classifier head: the last nn.Linear (or 1x1 nn.Conv2d, SqueezeNet) in
    registration order, with ``num_outputs`` outputs if given."""
    heads = [n for n, m in model.named_modules()
             if (isinstance(m, nn.Linear) and (num_outputs is None or m.out_features == num_outputs))
             or (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                 and (num_outputs is None or m.out_channels == num_outputs))]
    if not heads:
        raise ConfigError(f"cannot find the classifier head of {type(model).__name__} (no nn.Linear with "
                          f"{num_outputs} outputs) to replace it")
    return heads[-1]


def replace_head(model: nn.Module, old_classes: int, num_classes: int) -> nn.Module:
    """A fresh head with ``num_classes`` outputs where the one with ``old_classes`` was."""
    if old_classes == num_classes:
        return model
    name = find_head(model, old_classes)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, 1, bias=old.bias is not None)
    model.set_submodule(name, new)
    return model


def load_matching(model: nn.Module, state: Mapping[str, torch.Tensor], what: str, file: Path,
                  path: str = "model.weights") -> None:
    """Load ``state`` into ``model``; a head of another class count is left as the model built it
    (replaced); anything else that does not match is a one-line ConfigError."""
    own = model.state_dict()
    head = find_head(model)
    head_keys = {k for k in own if k.startswith(head + ".")}
    state = {k: v for k, v in state.items() if not (k in head_keys and v.shape != own[k].shape)}
    missing = [k for k in own if k not in state and k not in head_keys]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise ConfigError(f"{path}='{file}' is not allowed; it does not match {what}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


# importing the source modules registers them
from . import timm_source, torchvision_source  # noqa: E402,F401

__all__ = ["SOURCES", "ModelSource", "build_from_source", "check_source_config", "find_head", "load_matching",
           "load_state_file", "model_label", "register_source", "replace_head", "unknown_arch", "weights_file"]
