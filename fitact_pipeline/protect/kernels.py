"""Fused hard bounded forms: one pass over the activation map instead of relu + mask passes.

On CPU the C++ op of cpu_kernel.py runs when it fits the inputs; anything else (CUDA, other dtypes
or layouts, an op that could not be built) runs a torch.compile'd kernel of the same expression.
Both compute exactly the eager forms (tests compare them bit for bit), so which path ran never
changes a result. Why two kernels and what they cost: docs/protections.md, "Overheads".
"""
from __future__ import annotations

import torch

from . import cpu_kernel


def clip_expr(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x if 0 < x <= b and x < inf, else 0, as one expression. NaN <= b is False; the ``x < inf``
    term keeps +inf out when the bound itself is +inf (a float32 bound fault)."""
    return torch.where((x <= b) & (x < float("inf")), torch.relu(x), 0.0)


def clamp_expr(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min(max(0, x), b) as torch.clamp computes it (Ranger's default): NaN stays NaN, +inf -> b,
    -inf -> 0; a NaN bound gives NaN. Spelled with comparisons, not relu/minimum, so that the
    compiled kernel's NaN handling cannot differ from eager's."""
    r = torch.where((x > 0) | x.isnan(), x, 0.0)
    return torch.where((r < b) | r.isnan(), r, b)


def clamp_zero_expr(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """min(max(0, x), b) with non-finite x counted as 0 (Ranger, ``nonfinite=zero``). The minimum is
    taken for every x, as in the formula: a negative or NaN bound (a bound fault) gives b everywhere,
    as the eager form does."""
    return torch.minimum(torch.where((x > 0) & (x < float("inf")), x, 0.0), b)


# In-place forms for sites whose nn.ReLU was in place. Separate functions, not closures over the
# ones above: dynamo counts compiled variants per code object, and past its limit it silently runs
# the function eagerly.
def _clip_inplace(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.copy_(clip_expr(x, b))


def _clamp_inplace(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.copy_(clamp_expr(x, b))


def _clamp_zero_inplace(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.copy_(clamp_zero_expr(x, b))


_BODIES = {("clip", False): clip_expr, ("clip", True): _clip_inplace,
           ("clamp", False): clamp_expr, ("clamp", True): _clamp_inplace,
           ("clamp_zero", False): clamp_zero_expr, ("clamp_zero", True): _clamp_zero_inplace}
_COMPILED: dict = {}


def compiled(form: str, inplace: bool):
    """The expression compiled once per process with dynamic shapes, shared by every site and shape.

    Dynamic shapes because dynamo treats parameter shapes as static and would recompile per site
    until its limit, then silently run eagerly (callers pass ``bound.detach()`` for the same
    reason). ``cpp.dynamic_threads``: with dynamic shapes inductor otherwise emits a single-threaded
    loop; this makes it an OpenMP loop that takes the thread count at run time.
    """
    body = _BODIES[(form, inplace)]
    if body not in _COMPILED:
        _COMPILED[body] = torch.compile(body, dynamic=True, options={"cpp.dynamic_threads": True})
    return _COMPILED[body]


def fused_bounded(x: torch.Tensor, bound: torch.Tensor, form: str, inplace: bool) -> torch.Tensor:
    """The hard form ``form`` of ``x`` at ``bound`` in one pass: ``clip`` (Clip-Act, FitReLU-Naive),
    ``clamp`` or ``clamp_zero`` (Ranger; cpu_kernel.FORMS)."""
    if cpu_kernel.usable(x, bound):
        return cpu_kernel.bounded_relu(x, bound, form=form, inplace=inplace)
    return compiled(form, inplace)(x, bound)
