"""Bounded ReLU family: Ranger, Clip-Act, GB-ReLU and FitReLU (DESIGN.md §2.2).

Every bounded activation stores its bound as an ``nn.Parameter`` called ``bound``: the fault injector
puts every parameter whose name ends in ``.bound`` into the fault space (the paper stores bounds in the
same faulty memory as the weights), and FitAct post-training trains exactly these parameters.

Bound shapes for an activation map ``(N, C, H, W)`` / ``(N, F)``:
``layer`` -> ``()``, ``channel`` -> ``(C, 1, 1)`` / ``(F,)``, ``neuron`` -> ``(C, H, W)`` / ``(F,)``.
They broadcast against the batch without any reshaping in ``forward``.

NaN and +-inf inputs are faulty values: every bounded activation outputs 0 for them.

Cost. Inference cost is dominated by memory passes over the activation map and, on CPU, by
allocations (a fresh activation-sized tensor faults its pages in on first write). Like the nn.ReLU
it replaces, a bounded activation works in place when that ReLU did (``inplace``). The eager hard
forms run ``relu`` and then zero every value that is not ``<= b`` in place (``masked_fill_`` with
the negated comparison): ``NaN <= b`` and ``inf <= b`` are False, so NaN and +inf become 0 in the
same pass (relu maps -inf to 0 but keeps NaN); the mask is 1 byte per element. ``x * mask`` is
wrong (``NaN * 0`` is NaN). ``fused=True`` instead runs the whole activation as one kernel (one read
and one write per element, like nn.ReLU, plus the bound): on CPU a small C++ op (cpu_kernel.py),
elsewhere a torch.compile'd one; see benchmarks/overhead.py and docs/protections.md for the figures.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fitact_pipeline import cpu_kernel

GRANULARITIES = ("layer", "channel", "neuron")


def reduce_profile(profile: torch.Tensor, granularity: str) -> torch.Tensor:
    """Reduce a per-neuron profile ``(C,H,W)`` or ``(F,)`` to the bound shape of ``granularity``.

    The reduction is a max, so the bound never clips a value seen during profiling.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")
    p = profile.detach()
    if granularity == "layer":
        return p.amax() if p.numel() else p.new_zeros(())
    if granularity == "neuron" or p.dim() <= 1:
        return p.clone()
    # channel: one bound per output channel, kept as (C, 1, 1) so it broadcasts over H, W
    return p.amax(dim=tuple(range(1, p.dim())), keepdim=True)


class BoundedReLU(nn.Module):
    """Base class: a ReLU with an upper bound ``bound`` (scalar or per channel/neuron)."""

    #: whether post-training may train the bound (only FitAct)
    trainable = False

    def __init__(self, bound, granularity: str = "layer", inplace: bool = False, fused: bool = False):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of: {', '.join(GRANULARITIES)}")
        b = torch.as_tensor(bound, dtype=torch.float32).detach().clone()
        self.bound = nn.Parameter(b, requires_grad=self.trainable)
        self.granularity = granularity
        # in place only when the replaced nn.ReLU was in place: the caller then does not need its input
        self.inplace = inplace
        # fused=True: inference (no autograd) through one torch.compile'd kernel instead of
        # threshold + masked_fill_ (2 extra passes); see the module docstring
        self.fused = fused

    def _use_fused(self, x) -> bool:
        return self.fused and not (torch.is_grad_enabled() and (x.requires_grad or self.bound.requires_grad))

    def _fused_forward(self, fn, x: torch.Tensor) -> torch.Tensor:
        bound = self.bound.detach()
        if cpu_kernel.usable(x, bound):  # the C++ op: cheaper for neuron-wise bounds on CPU
            return cpu_kernel.bounded_relu(x, bound, clamp=fn is _clamp_eager, inplace=self.inplace)
        return _fused(fn, self.inplace)(x, bound)

    def _relu(self, x: torch.Tensor) -> torch.Tensor:
        # keeps NaN (every caller removes it with a "not <=" mask); -inf -> 0
        return torch.relu_(x) if self.inplace else torch.relu(x)

    def extra_repr(self) -> str:
        return f"granularity={self.granularity}, bound_shape={tuple(self.bound.shape)}"


def _clip_eager(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x if 0 < x <= b and x < inf, else 0, as one expression (the body that torch.compile fuses).
    NaN <= b is False; the ``x < inf`` term keeps +inf out when the bound itself is +inf (a float32
    bound fault)."""
    return torch.where((x <= b) & (x < float("inf")), torch.relu(x), 0.0)


def _clamp_eager(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min(max(0, x), b) with non-finite x counted as 0, as one expression for torch.compile. The
    minimum is taken for every x, as in the formula: a negative or NaN bound (a bound fault) gives b
    everywhere, as the eager form does."""
    return torch.minimum(torch.where((x > 0) & (x < float("inf")), x, 0.0), b)


# In-place forms for sites whose nn.ReLU was in place. Separate functions, not closures over the
# ones above: dynamo counts compiled variants per code object, and past its limit it silently runs
# the function eagerly.
def _clip_inplace(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.copy_(_clip_eager(x, b))


def _clamp_inplace(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.copy_(_clamp_eager(x, b))


_INPLACE = {_clip_eager: _clip_inplace, _clamp_eager: _clamp_inplace}


_COMPILED: dict = {}


def _fused(fn, inplace: bool = False):
    """``fn`` compiled once per process with dynamic shapes: one fused pass over the activation map.
    ``inplace`` writes the result into the input (``x.copy_(fn(x, b))``, which inductor turns into one
    kernel that loads and stores the same buffer), for sites whose nn.ReLU was in place: an
    out-of-place result is a fresh activation-sized allocation, and on CPU every large allocation
    comes back from the OS as new pages that fault in on first write (measured: an out-of-place
    relu of a 64 MB map costs ~9x the in-place one).

    Compiling only the activation (not the whole model) costs ~15 s once on CPU, and is shared by
    every site and every shape; conv/linear stay on their eager (oneDNN) kernels. Callers pass
    ``bound.detach()``: dynamo treats nn.Parameter shapes as static and would recompile per site
    shape until its recompile limit, then silently fall back to eager.

    ``cpp.dynamic_threads``: with dynamic shapes inductor cannot size the work at compile time and
    emits a single-threaded loop; this option makes it emit an OpenMP loop that takes the thread
    count at run time (also right for joblib workers that set their own thread count).

    On CPU this is only the fallback: BoundedReLU uses the C++ op of cpu_kernel.py when it can.
    """
    body = _INPLACE[fn] if inplace else fn
    if body not in _COMPILED:
        _COMPILED[body] = torch.compile(body, dynamic=True, options={"cpp.dynamic_threads": True})
    return _COMPILED[body]


def _zero_above(y: torch.Tensor, b) -> torch.Tensor:
    """On a ReLU output: zero every value that is not <= b (above the bound, +inf, NaN)."""
    if isinstance(b, torch.Tensor):  # an inf bound (float32 bound fault) must still zero +inf inputs
        b = b.detach().clamp(max=torch.finfo(y.dtype).max)  # (a NaN bound stays NaN: all zero)
    mask = y.le(b).logical_not_()  # not (y > b): NaN must land in the mask
    if y.requires_grad:  # keep autograd's view of y intact when training through the hard form
        return y.masked_fill(mask, 0.0)
    return y.masked_fill_(mask, 0.0)


class ClipActReLU(BoundedReLU):
    """Clip-Act (Hoang et al., DATE 2020): x if 0 <= x <= b else 0."""

    def forward(self, x):
        if self._use_fused(x):
            return self._fused_forward(_clip_eager, x)
        return _zero_above(self._relu(x), self.bound)


class GBReLU(ClipActReLU):
    """Globally bounded ReLU used for the Fig. 1 sweeps: same function as Clip-Act, given bound."""


class RangerReLU(BoundedReLU):
    """Ranger (Chen et al.): clamp, min(max(0, x), b); non-finite inputs give 0 (DESIGN §2.2)."""

    def forward(self, x):
        if self._use_fused(x):
            return self._fused_forward(_clamp_eager, x)
        y = self._relu(x)  # -inf -> 0
        # NaN and +inf are faults, not large activations: 0, not b (DESIGN §2.2)
        y = _zero_above(y, torch.finfo(y.dtype).max)
        return torch.minimum(y, self.bound.to(y.dtype)) if y.requires_grad else y.clamp_(max=self.bound)


class FitReLU(BoundedReLU):
    """FitReLU (FitAct, Eq. 6): f(x) = max(0, x) * sigmoid(k * (b - x)), trainable bound.

    ``hard=True`` uses FitReLU-Naive (Eq. 5), x if 0 <= x <= b else 0, the inference form; the
    smooth form gives the bound a gradient and is what post-training uses (``posttrain.py`` switches
    ``hard`` off while training and back for validation).
    """

    trainable = True

    def __init__(self, bound, granularity: str = "neuron", k: float = 20.0, hard: bool = False,
                 inplace: bool = False, fused: bool = False):
        super().__init__(bound, granularity, inplace, fused)
        self.k = float(k)
        self.hard = bool(hard)

    def forward(self, x):
        if self.hard:
            if self._use_fused(x):
                return self._fused_forward(_clip_eager, x)
            return _zero_above(self._relu(x), self.bound)
        # sanitise first: inf * sigmoid(-inf) = inf * 0 = NaN, and a NaN in the unselected branch of
        # a torch.where would still poison the bound's gradient
        x = torch.where(torch.isfinite(x), x, 0.0)
        y = F.relu(x)
        return y * torch.sigmoid(self.k * (self.bound - y))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}, hard={self.hard}"


ACTIVATIONS = {"ranger": RangerReLU, "clipact": ClipActReLU, "gbrelu": GBReLU, "fitact": FitReLU}


def make_activation(name: str, bound, granularity: str = "layer", k: float = 20.0, hard: bool = True,
                    inplace: bool = False, fused: bool = False) -> BoundedReLU:
    """Build the bounded activation of protection ``name`` with an already reduced ``bound``."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown bounded activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}")
    if name == "fitact":
        return FitReLU(bound, granularity, k=k, hard=hard, inplace=inplace, fused=fused)
    return ACTIVATIONS[name](bound, granularity, inplace=inplace, fused=fused)


def set_fitrelu_hard(model: nn.Module, hard) -> dict[str, bool]:
    """Set ``hard`` on every FitReLU (bool, or a dict name -> bool); return the previous flags."""
    old = {}
    for name, m in model.named_modules():
        if isinstance(m, FitReLU):
            old[name] = m.hard
            m.hard = hard[name] if isinstance(hard, dict) else bool(hard)
    return old
