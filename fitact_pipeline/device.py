"""The device every stage runs on (``device=cpu | cuda | cuda:N | auto``): training, profiling,
post-training, the FT-ClipAct search, campaigns and the overhead measurement."""
from __future__ import annotations

import torch

from .checks import fail


def resolve_device(value) -> torch.device:
    """The torch device of a ``device`` setting, or a one-line ConfigError when it is not one this
    machine has (checked before any work)."""
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "use cpu, cuda, cuda:<index> or auto"
    try:
        device = torch.device(str(value))
    except (RuntimeError, ValueError, TypeError):
        fail("device", value, allowed)
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        fail("device", value, allowed)
    if not torch.cuda.is_available():
        fail("device", value, "this machine has no CUDA device; use device=cpu or device=auto")
    if device.index is not None and device.index >= torch.cuda.device_count():
        fail("device", value, f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def lightning_accelerator(device: torch.device) -> tuple[str, list[int] | int]:
    """Lightning's (accelerator, devices) for a torch device."""
    if device.type == "cuda":
        return "gpu", [device.index or 0]
    return "cpu", 1
