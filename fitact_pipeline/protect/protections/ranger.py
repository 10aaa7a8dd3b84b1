"""Ranger (Chen et al., DSN 2021): clamp at the profiled layer maximum."""
from __future__ import annotations

import torch

from ..bounded import BoundedReLU, zero_above
from ..registry import Protection, register_protection


class RangerReLU(BoundedReLU):
    """min(max(0, x), b); non-finite inputs give 0 (DESIGN §2.2). Other kinds: min(max(g(x), a), b)."""

    clamps = True

    def forward(self, x):
        if not self._is_relu:
            return self._clamp_kind(x)
        if self._use_fused(x):
            return self._fused_forward(x)
        y = self._relu(x)  # -inf -> 0
        # NaN and +inf are faults, not large activations: 0, not b (DESIGN §2.2)
        y = zero_above(y, torch.finfo(y.dtype).max)
        # out of place under autograd, and under vmap (clamp_ with a tensor bound has no batching rule)
        if y.requires_grad or torch._C._functorch.is_batchedtensor(y):
            return torch.minimum(y, self.bound.to(y.dtype))
        return y.clamp_(max=self.bound)


def options(cfg, sites) -> dict:
    return {"fused": bool(cfg.get("fused", False))}


register_protection(Protection("ranger", RangerReLU, "min(max(0, x), b): clamp at the profiled maximum; "
                               "other g: min(max(g(x), a), b)",
                               config_keys=("granularity", "fused"), order=10, options=options))
