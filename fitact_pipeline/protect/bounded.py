"""The base of every bounded activation: a bound tensor per site and the shared hard-form helpers
(DESIGN.md §2.2).

Every bounded activation stores its bound as an ``nn.Parameter`` called ``bound``: the fault space's
target kind ``bound`` is every parameter of that name (the paper stores bounds in the same faulty
memory as the weights), and bound training (FitAct post-training) trains exactly these parameters.

Bound shapes for an activation map ``(N, C, H, W)`` / ``(N, F)``:
``layer`` -> ``()``, ``channel`` -> ``(C, 1, 1)`` / ``(F,)``, ``neuron`` -> ``(C, H, W)`` / ``(F,)``.
They broadcast against the batch without any reshaping in ``forward``. NaN and +-inf inputs are
faulty values: every bounded activation outputs 0 for them.

A bounded activation works in place when the nn.ReLU it replaces did (``inplace``): an out-of-place
result is a fresh activation-sized allocation, which on CPU costs far more than the pass itself.
``fused=True`` runs the hard forms (inference only) as one kernel (kernels.py); the outputs are the
eager ones. Measurements: docs/protections.md, "Overheads".
"""
from __future__ import annotations

import torch
from torch import nn

from .kernels import fused_bounded

GRANULARITIES = ("layer", "channel", "neuron")


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")
    return granularity


def reduce_profile(profile: torch.Tensor, granularity: str) -> torch.Tensor:
    """Reduce a per-neuron profile ``(C,H,W)`` or ``(F,)`` to the bound shape of ``granularity``.

    The reduction is a max, so the bound never clips a value seen during profiling.
    """
    check_granularity(granularity)
    p = profile.detach()
    if granularity == "layer":
        return p.amax() if p.numel() else p.new_zeros(())
    if granularity == "neuron" or p.dim() <= 1:
        return p.clone()
    # channel: one bound per output channel, kept as (C, 1, 1) so it broadcasts over H, W
    return p.amax(dim=tuple(range(1, p.dim())), keepdim=True)


class BoundedReLU(nn.Module):
    """Base class: a ReLU with an upper bound ``bound`` (scalar or per channel/neuron)."""

    #: whether bound training may train the bound (only FitAct)
    trainable = False
    #: the fused hard form: True = clamp at the bound (Ranger), False = zero above it (Clip-Act)
    clamps = False

    def __init__(self, bound, granularity: str = "layer", inplace: bool = False, fused: bool = False):
        super().__init__()
        check_granularity(granularity)
        b = torch.as_tensor(bound, dtype=torch.float32).detach().clone()
        self.bound = nn.Parameter(b, requires_grad=self.trainable)
        self.granularity = granularity
        self.inplace = inplace
        self.fused = fused

    def _use_fused(self, x) -> bool:
        # the fused kernel has no autograd and no vmap rule (several fault maps in one pass:
        # faults/multimap.py): only when nothing needs a gradient and the tensors are plain
        if torch._C._functorch.is_batchedtensor(x) or torch._C._functorch.is_batchedtensor(self.bound):
            return False
        return self.fused and not (torch.is_grad_enabled() and (x.requires_grad or self.bound.requires_grad))

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_bounded(x, self.bound.detach(), clamp=self.clamps, inplace=self.inplace)

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        # keeps NaN (every caller removes it with a "not <=" mask); -inf -> 0
        return torch.relu_(x) if self.inplace else torch.relu(x)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        """The hard clip form, x if 0 <= x <= b else 0, eager or fused."""
        if self._use_fused(x):
            return self._fused_forward(x)
        return zero_above(self._relu(x), self.bound)

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, bound_shape={tuple(self.bound.shape)}"


def zero_above(y: torch.Tensor, b) -> torch.Tensor:
    """On a ReLU output: zero every value that is not <= b (above the bound, +inf, NaN).

    The negated ``<=`` puts NaN and +inf in the mask (``y > b`` would miss NaN, ``y * mask`` would
    turn NaN * 0 into NaN)."""
    if isinstance(b, torch.Tensor):  # an inf bound (float32 bound fault) must still zero +inf inputs
        b = b.detach().clamp(max=torch.finfo(y.dtype).max)  # (a NaN bound stays NaN: all zero)
    mask = y.le(b).logical_not_()
    if y.requires_grad:  # keep autograd's view of y intact when training through the hard form
        return y.masked_fill(mask, 0.0)
    return y.masked_fill_(mask, 0.0)
