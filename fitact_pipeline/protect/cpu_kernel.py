"""CPU inference kernel of the hard bounded activations, built from ``csrc/bounded_relu.cpp`` on
first use.

``fused=True`` activations (kernels.py) call :func:`bounded_relu` when :func:`usable` says the
inputs fit it (CPU, float32, contiguous, a layer-, channel- or neuron-wise bound); anything else,
CUDA included, goes through the torch.compile'd kernel. The op computes exactly the eager
expressions (tests compare them bit for bit), so which path ran never changes a result.

Why not torch.compile here too: the generated loop reads a neuron-wise bound once per sample, a
second stream as large as the activation map; the C++ op lets four samples share each bound load.
The measurements (benchmarks/activation_kernels.py, benchmarks/overhead.py): docs/protections.md,
"Overheads".

Building needs a C++ compiler with OpenMP and ninja (torch.utils.cpp_extension); it happens once
per machine and torch caches the library under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``), rebuilding when the source changes. If the build fails the reason is
logged once and the compiled kernel is used instead.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "bounded_relu.cpp"
# "_modes": the op takes a mode (clip, clamp, clamp_zero) since Ranger keeps NaN by default; a new
# name, so that a checkout with the older two-form op keeps its own build directory
EXTENSION_NAME = "fitact_bounded_relu_modes"
#: the hard forms the op computes (the int the op takes): Clip-Act's, Ranger's clamp (NaN kept,
#: +inf -> b) and Ranger's clamp with non-finite inputs counted as 0 (``protection.nonfinite=zero``)
FORMS = {"clip": 0, "clamp": 1, "clamp_zero": 2}
_loaded: dict = {}  # "ok": bool, set by the first load()


def _ninja_on_path() -> None:
    # the pip ``ninja`` package puts the binary in the venv's bin, which is not on PATH when the
    # venv's python is run without activating it; torch looks ninja up on PATH
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _register_fakes() -> None:
    # shape-only versions, so that torch.compile of a whole protected model can trace through the op
    torch.library.register_fake("fitact::bounded_relu")(lambda x, bound, form: torch.empty_like(x))
    torch.library.register_fake("fitact::bounded_relu_")(lambda x, bound, form: None)


def load() -> bool:
    """Build (first time on this machine) and load the op; False, with the reason logged, if it
    cannot be built."""
    if "ok" not in _loaded:
        try:
            from torch.utils.cpp_extension import load as load_extension

            _ninja_on_path()
            log.info("loading the CPU bounded-activation kernel (built on first use on a machine, ~25 s)")
            load_extension(EXTENSION_NAME, sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False)
            _register_fakes()
            _loaded["ok"] = True
        except Exception as exc:  # no compiler, no ninja, no OpenMP: the compiled kernel still works
            log.warning("CPU bounded-activation kernel unavailable (%s: %s); using the torch.compile'd "
                        "kernel instead", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            _loaded["ok"] = False
    return _loaded["ok"]


def bound_runs(sample_shape, bound_shape) -> bool:
    """Whether the bound covers a sample as contiguous runs: value c applies to elements
    [c*S, (c+1)*S) of the flattened sample. True for the layer ``()``, channel ``(C, 1, 1)`` /
    ``(F,)`` and neuron ``(C, H, W)`` shapes; False for other broadcasts (e.g. one bound per
    column), which the op would misread."""
    sample, bound = tuple(sample_shape), tuple(bound_shape)
    if len(bound) > len(sample):
        return False
    kept = len(bound)
    while kept and bound[kept - 1] == 1:
        kept -= 1
    if kept and len(bound) != len(sample):  # right-aligned broadcast that skips leading sample dims
        return False
    return bound[:kept] == sample[:kept]


def usable(x: torch.Tensor, bound: torch.Tensor) -> bool:
    """Whether :func:`bounded_relu` handles these inputs (and the op could be built)."""
    return (x.device.type == "cpu" and bound.device.type == "cpu" and x.dtype == torch.float32
            and bound.dtype == torch.float32 and x.dim() >= 2 and x.is_contiguous()
            and bound.is_contiguous() and bound_runs(x.shape[1:], bound.shape) and load())


def bounded_relu(x: torch.Tensor, bound: torch.Tensor, form: str, inplace: bool) -> torch.Tensor:
    """The hard form ``form`` (one of :data:`FORMS`: ``clip`` for Clip-Act/FitReLU-Naive, ``clamp``
    or ``clamp_zero`` for Ranger) of ``x`` at ``bound``; in place into ``x`` when ``inplace``. Call
    only where :func:`usable` is True."""
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not allowed; choose one of: {', '.join(FORMS)}")
    if not load():
        raise RuntimeError("the CPU bounded-activation kernel could not be built (see the log); "
                           "check cpu_kernel.usable() before calling bounded_relu")
    if inplace:
        torch.ops.fitact.bounded_relu_(x, bound, FORMS[form])
        return x
    return torch.ops.fitact.bounded_relu(x, bound, FORMS[form])
