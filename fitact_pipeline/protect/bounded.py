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

Other activations (DESIGN.md §2.8, docs/protections.md "Bounded forms of other activations"): built
with ``activation=<the site's module>`` (nn.GELU, nn.ReLU6, ...), a bounded activation bounds g(x) of
that module's kind (activations.py) instead of max(0, x); kinds unbounded below also store a lower
bound ``lower``. The ReLU code paths are untouched by this (bit-identical results); the fused
kernels stay ReLU-only, other kinds run their eager forms.
"""
from __future__ import annotations

import torch
from torch import nn

from ..activations import ACTIVATIONS, ActivationKind, BoundsAKind, kind_of
from .kernels import fused_bounded

GRANULARITIES = ("layer", "channel", "neuron")


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")
    return granularity


def reduce_profile(profile: torch.Tensor, granularity: str, lower: bool = False) -> torch.Tensor:
    """Reduce a per-neuron profile ``(C,H,W)``, ``(T,F)`` or ``(F,)`` to the bound shape of
    ``granularity``.

    The reduction is a max (a min for a lower bound, ``lower=True``), so the bound never clips a
    value seen during profiling.
    """
    check_granularity(granularity)
    p = profile.detach()
    reduce = torch.amin if lower else torch.amax
    if granularity == "layer":
        return reduce(p) if p.numel() else p.new_zeros(())
    if granularity == "neuron" or p.dim() <= 1:
        return p.clone()
    if p.dim() == 2:  # a token map (T, F): one bound per feature, shared by every token
        return reduce(p, dim=0)
    # channel: one bound per output channel, kept as (C, 1, 1) so it broadcasts over H, W
    return reduce(p, dim=tuple(range(1, p.dim())), keepdim=True)


class BoundedReLU(nn.Module, BoundsAKind):
    """Base class: a ReLU (or, with ``activation``, the activation of that module's kind) with an
    upper bound ``bound`` (scalar or per channel/neuron) and, for kinds unbounded below, a lower
    bound ``lower`` of the same shape."""

    #: whether bound training may train the bound (only FitAct)
    trainable = False
    #: the fused hard form: True = clamp at the bound (Ranger), False = zero above it (Clip-Act)
    clamps = False

    def __init__(self, bound, granularity: str = "layer", inplace: bool = False, fused: bool = False, *,
                 activation: nn.Module | None = None, lower=None):
        super().__init__()
        check_granularity(granularity)
        kind = ACTIVATIONS["relu"] if activation is None else _kind(activation)
        b = torch.as_tensor(bound, dtype=torch.float32).detach().clone()
        if kind.cap is not None:  # ReLU6, Hardsigmoid: the bound starts at min(profiled max, cap)
            b = b.clamp(max=kind.cap)
        self.bound = nn.Parameter(b, requires_grad=self.trainable)
        self.granularity = granularity
        self.inplace = inplace
        self.fused = fused
        self.kind = kind.name
        self._is_relu = kind.name == "relu"
        self.settings = kind.settings_of(activation) if activation is not None else {}
        for name in kind.parameters:  # PReLU's slope: same name as in the module it replaces
            self.register_parameter(name, nn.Parameter(getattr(activation, name).detach().clone(), requires_grad=False))
        if kind.lower:
            if lower is None:
                raise ValueError(f"a bounded {kind.name} needs a lower bound (the profiled minimum): pass lower=")
            self.lower = nn.Parameter(torch.as_tensor(lower, dtype=torch.float32).detach().clone(),
                                      requires_grad=self.trainable)

    def bound_tensors(self) -> dict[str, nn.Parameter]:
        """The bounds this activation stores: ``bound``, and ``lower`` where its kind has one."""
        return {"bound": self.bound, **({"lower": self.lower} if hasattr(self, "lower") else {})}

    def _g(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """g(x) of a non-ReLU kind (PReLU reads its slope from this module)."""
        kind = ACTIVATIONS[self.kind]
        settings = {**self.settings, **{n: getattr(self, n) for n in kind.parameters}}
        return kind.apply(x, settings, inplace)

    def _outside(self, y: torch.Tensor, infinite: torch.Tensor | None) -> torch.Tensor:
        """Where a non-ReLU hard form outputs 0: y = g(x) not in [lower, bound] (negated comparisons,
        so a NaN y or a NaN bound is outside too), or x not finite (``infinite``, where g may map
        an infinite x inside the bounds)."""
        mask = y.le(_finite_bound(self.bound, y)).logical_not_()
        if hasattr(self, "lower"):
            mask.logical_or_(y.ge(_finite_bound(self.lower, y)).logical_not_())
        return mask if infinite is None else mask.logical_or_(infinite)

    def _clip_kind(self, x: torch.Tensor) -> torch.Tensor:
        """Clip-Act's form for a non-ReLU kind: g(x) if lower <= g(x) <= bound and x finite, else 0."""
        infinite = torch.isfinite(x).logical_not_() if ACTIVATIONS[self.kind].saturates else None
        # in place where the replaced module was (x is not needed after it) and nothing needs a gradient
        y = self._g(x, self.inplace and not (torch.is_grad_enabled() and x.requires_grad))
        mask = self._outside(y, infinite)
        return y.masked_fill(mask, 0.0) if y.requires_grad else y.masked_fill_(mask, 0.0)

    def _clamp_kind(self, x: torch.Tensor) -> torch.Tensor:
        """Ranger's form for a non-ReLU kind: min(max(g(x), lower), bound); 0 for non-finite x."""
        y = torch.where(torch.isfinite(x), self._g(x), 0.0)
        if hasattr(self, "lower"):
            y = torch.maximum(y, self.lower.to(y.dtype))
        return torch.minimum(y, self.bound.to(y.dtype))

    def _smooth_kind(self, x: torch.Tensor, k: float) -> torch.Tensor:
        """FitAct's smooth form for a non-ReLU kind: g(x) sigmoid(k (b - g)) [sigmoid(k (g - a))]."""
        finite = torch.isfinite(x)
        # sanitise first: a NaN in the unselected branch of a torch.where would poison the gradient
        y = self._g(torch.where(finite, x, 0.0))
        out = y * torch.sigmoid(k * (self.bound - y))
        if hasattr(self, "lower"):
            out = out * torch.sigmoid(k * (y - self.lower))
        return torch.where(finite, out, 0.0)

    def _use_fused(self, x) -> bool:
        # the fused kernels are ReLU-only, have no autograd and no vmap rule (several fault maps in
        # one pass: faults/multimap.py): only when nothing needs a gradient and the tensors are plain
        if torch._C._functorch.is_batchedtensor(x) or torch._C._functorch.is_batchedtensor(self.bound):
            return False
        return self.fused and self._is_relu and \
            not (torch.is_grad_enabled() and (x.requires_grad or self.bound.requires_grad))

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_bounded(x, self.bound.detach(), clamp=self.clamps, inplace=self.inplace)

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        # keeps NaN (every caller removes it with a "not <=" mask); -inf -> 0
        return torch.relu_(x) if self.inplace else torch.relu(x)

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        """The hard clip form, x if 0 <= x <= b else 0 (g(x) if a <= g(x) <= b else 0), eager or fused."""
        if not self._is_relu:
            return self._clip_kind(x)
        if self._use_fused(x):
            return self._fused_forward(x)
        return zero_above(self._relu(x), self.bound)

    def extra_repr(self) -> str:
        kind = "" if self._is_relu else f"kind={self.kind}{', ' + str(self.settings) if self.settings else ''}, "
        lower = f", lower_shape={tuple(self.lower.shape)}" if hasattr(self, "lower") else ""
        return f"{kind}granularity={self.granularity}, bound_shape={tuple(self.bound.shape)}{lower}"


def _kind(activation: nn.Module) -> ActivationKind:
    kind = kind_of(activation)
    if kind is None:
        raise ValueError(f"{type(activation).__name__} has no bounded form; kinds with one: {', '.join(ACTIVATIONS)}")
    return kind


def _finite_bound(b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # an inf bound (a float32 bound fault) must still leave +-inf outputs outside (a NaN bound stays NaN)
    big = torch.finfo(y.dtype).max
    return b.detach().clamp(min=-big, max=big).to(y.dtype)


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
