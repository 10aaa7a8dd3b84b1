"""Ranger (Chen et al., DSN 2021): clamp at the profiled layer maximum.

Non-finite inputs (DESIGN.md §2.8): by default as Ranger's own clamp computes them, min(max(x, 0), b)
with torch.clamp's semantics: NaN stays NaN, +inf goes to the bound, -inf to 0. ``nonfinite="zero"``
(``protection.nonfinite=zero``) is the variant that counts NaN and +-inf as faults and outputs 0 for
them, as Clip-Act's and FitAct's hard forms do; it was this project's Ranger before issue 24.
"""
from __future__ import annotations

import torch

from ...checks import fail
from ..bounded import BoundedReLU, zero_above
from ..registry import Protection, register_protection

#: what Ranger does with NaN and +-inf inputs: clamp them as torch.clamp does, or output 0
NONFINITE = ("clamp", "zero")


class RangerReLU(BoundedReLU):
    """min(max(0, x), b), NaN kept and +inf -> b (``nonfinite="zero"``: non-finite -> 0). Other
    kinds: min(max(g(x), a), b)."""

    def __init__(self, *args, nonfinite: str = "clamp", **kwargs):
        super().__init__(*args, **kwargs)
        if nonfinite not in NONFINITE:
            raise ValueError(f"nonfinite={nonfinite!r} is not allowed; choose one of: {', '.join(NONFINITE)}")
        self.nonfinite = nonfinite
        self.fused_form = "clamp" if nonfinite == "clamp" else "clamp_zero"

    def forward(self, x):
        if not self._is_relu:
            return self._clamp_kind(x, zero_nonfinite=self.nonfinite == "zero")
        if self._use_fused(x):
            return self._fused_forward(x)
        y = self._relu(x)  # -inf -> 0; NaN and +inf kept, then clamped as torch.clamp does
        if self.nonfinite == "zero":  # NaN and +inf as faults: 0, not b
            y = zero_above(y, torch.finfo(y.dtype).max)
        # out of place under autograd, and under vmap (clamp_ with a tensor bound has no batching rule)
        if y.requires_grad or torch._C._functorch.is_batchedtensor(y):
            return torch.minimum(y, self.bound.to(y.dtype))
        return y.clamp_(max=self.bound)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", nonfinite=zero" if self.nonfinite == "zero" else "")


def options(cfg, sites) -> dict:
    return {"fused": bool(cfg.get("fused", False))}


def _options(cfg, sites) -> dict:
    return {**options(cfg, sites), "nonfinite": cfg.get("nonfinite", "clamp")}


def _check(cfg) -> None:
    if cfg.get("nonfinite", "clamp") not in NONFINITE:
        fail("protection.nonfinite", cfg.get("nonfinite"), f"choose one of: {', '.join(NONFINITE)}")


def _label(params) -> str:
    return " nonfinite=zero" if params.get("protection.nonfinite") == "zero" else ""


register_protection(Protection("ranger", RangerReLU, "min(max(0, x), b): clamp at the profiled maximum (NaN kept, "
                               "+inf -> b; nonfinite=zero: 0); other g: min(max(g(x), a), b)",
                               config_keys=("granularity", "fused", "nonfinite"), order=10, options=_options,
                               check=_check, label=_label))
