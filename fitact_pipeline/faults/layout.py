"""The storage layout of the fault space: every selected tensor as a view of one float32 buffer.

A trial then flips and restores all tensors with one gather and one scatter instead of a few small
ops per tensor, which dominated the cost of a trial (docs/faults.md, "Cost of a trial").
"""
from __future__ import annotations

import torch

ALIGN = 16  # floats: each view starts on a 64-byte boundary, as a tensor of its own would


def gather_into_one_buffer(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """Move ``tensors`` (parameters or buffers, by their ``.data``) into one buffer and return it.

    Each tensor becomes a view of the buffer at an aligned offset, so kernels see the same memory
    layout and outputs stay bit-identical. None (nothing moved) when the tensors are not all float32
    on one device: each is then flipped in its own storage.
    """
    if not tensors or any(t.dtype != torch.float32 or t.device != tensors[0].device for t in tensors):
        return None
    sizes = [-(-t.numel() // ALIGN) * ALIGN for t in tensors]
    # zeros, not empty: the alignment padding between views is never a weight, but whole-buffer
    # operations (parity encoding, before/after comparisons) must not read uninitialised memory
    store = torch.zeros(sum(sizes) + ALIGN, dtype=torch.float32, device=tensors[0].device)
    start = (-(store.data_ptr() // 4)) % ALIGN  # first aligned float inside the buffer
    with torch.no_grad():
        for t, size in zip(tensors, sizes):
            view = store[start:start + t.numel()].view(t.shape)
            view.copy_(t)
            t.data = view
            start += size
    return store


def element_offset(store: torch.Tensor | None, flat: torch.Tensor, running: int) -> int:
    """A tensor's first element in the virtual concatenation of the fault space: its place in the
    one buffer, or the running count of elements when there is no buffer."""
    if store is None:
        return running
    return flat.data_ptr() // 4 - store.data_ptr() // 4
