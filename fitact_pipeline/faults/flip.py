"""Flip and restore, one code path per format family (formats.py: ``NumberFormat.family``).

A trial flips bits in place and restores by writing back the saved float32 values of the touched
elements only: no model copy, cost proportional to the number of flips. Flips are vectorised:
gather the touched elements, encode them to words in one batch, XOR one combined mask per element
(several bits of one word flip together), decode, scatter back. The index work is numpy, whose
per-call cost is below torch's dispatch: the cost of a trial is these few ops, not the flips
(docs/faults.md, "Cost").

``flip`` appends ``(storage, index, original values)`` to ``saved``; ``restore`` writes them back.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .formats import Codec, FixedCodec, Float32Codec, Int8Codec

if TYPE_CHECKING:  # space.py imports this module
    from .space import FaultSpace, Slot


def restore(saved: list) -> None:
    # reverse order so that, were a slot ever touched twice, the oldest values win
    for flat, index, orig in reversed(saved):
        if isinstance(flat, np.ndarray):
            flat[index] = orig
        else:
            flat.index_copy_(0, index, orig)


def _element_masks(space: "FaultSpace", field_idx, elements, bits) -> tuple[np.ndarray, np.ndarray]:
    """(global element index, XOR mask) per touched element, elements sorted and unique."""
    glob = space.field_elem_offset.numpy()[field_idx.numpy()] + elements.numpy()  # sorted: fields in slot order
    first = np.ones(glob.size, dtype=bool)
    np.not_equal(glob[1:], glob[:-1], out=first[1:])
    one_bit = np.left_shift(1, bits.numpy())
    masks = one_bit[first]
    more = np.flatnonzero(~first)  # further bits of an element (rare): OR them into its mask
    if more.size:
        np.bitwise_or.at(masks, np.cumsum(first)[more] - 1, one_bit[more])
    return glob[first], masks


class WordFamily:
    """One word per value (fixed point, float32/16, bfloat16): one buffer, one encode/XOR/decode."""

    one_buffer = True

    @staticmethod
    def quantise(codec: Codec, slot: "Slot", shape: torch.Size) -> None:
        if isinstance(codec, FixedCodec) and not bool(torch.isfinite(slot.flat).all()):
            raise ValueError(f"tensor {slot.name!r} holds inf or NaN; fixed point cannot store it")
        slot.flat.copy_(codec.quantize(slot.flat))

    @staticmethod
    def flip(space: "FaultSpace", field_idx, elements, bits, saved: list) -> None:
        uniq, masks = _element_masks(space, field_idx, elements, bits)
        store, codec = space.store, space.codec
        if store is not None and store.device.type == "cpu":  # numpy view of the one buffer
            store_np = store.numpy()
            orig = store_np[uniq]
            saved.append((store_np, uniq, orig))
            store_np[uniq] = codec.flip(orig, masks)
        elif store is not None:  # one gather and one scatter on the store's device
            index = torch.from_numpy(uniq).to(store.device)
            orig = store.index_select(0, index)
            saved.append((store, index, orig))
            store.index_copy_(0, index, torch.from_numpy(codec.flip(orig.cpu().numpy(), masks)).to(store.device))
        else:
            _flip_per_slot(space, torch.from_numpy(uniq), masks, saved)


def _flip_per_slot(space: "FaultSpace", uniq: torch.Tensor, masks: np.ndarray, saved: list) -> None:
    """Tensors not in one buffer (mixed devices or dtypes): gather from each, flip together, scatter."""
    offsets = torch.tensor([s.elem_offset for s in space.slots] + [space.total_elements], dtype=torch.int64)
    cuts = torch.searchsorted(uniq, offsets).tolist()
    touched, origs = [], []
    for s, slot in enumerate(space.slots):
        a, b = cuts[s], cuts[s + 1]
        if a == b:
            continue
        local = (uniq[a:b] - slot.elem_offset).to(slot.flat.device)
        orig = slot.flat.index_select(0, local)
        saved.append((slot.flat, local, orig))
        touched.append((slot.flat, local, a, b))
        origs.append(orig.cpu())
    new = torch.from_numpy(space.codec.flip(torch.cat(origs).numpy(), masks))
    for flat, local, a, b in touched:
        flat.index_copy_(0, local, new[a:b].to(flat.device))


def _combined(el: torch.Tensor, bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique elements, one XOR mask each) of sorted (element, bit) pairs."""
    uniq, inverse = torch.unique_consecutive(el, return_inverse=True)
    return uniq, torch.zeros(uniq.numel(), dtype=torch.int64).index_add_(0, inverse, 1 << bt)


class ScaledFamily:
    """int8 words with a float32 scale per output channel: a word flip changes one element, a scale
    flip its whole channel. Arithmetic on the CPU; index tensors and saved values follow the
    model's device."""

    one_buffer = False

    @staticmethod
    def quantise(codec: Int8Codec, slot: "Slot", shape: torch.Size) -> None:
        stored, scales = codec.quantize_tensor(slot.flat.view(shape))
        slot.flat.copy_(stored.reshape(-1))
        slot.scales = scales.cpu()
        slot.group = Int8Codec.element_channels(shape)

    @staticmethod
    def flip(space: "FaultSpace", field_idx, elements, bits, saved: list) -> None:
        for s, slot in enumerate(space.slots):
            words = scales = None
            for i, f in enumerate(space.fields):
                if f.slot != s:
                    continue
                sel = field_idx == i
                if bool(sel.any()):
                    if f.is_scale:
                        scales = _combined(elements[sel], bits[sel])
                    else:
                        words = _combined(elements[sel], bits[sel])
            if words is not None or scales is not None:
                _flip_scaled_slot(space.codec, slot, words, scales, saved)


def _flip_scaled_slot(codec: Int8Codec, slot: "Slot", words, scale_flips, saved: list) -> None:
    scales, parts = slot.scales, []
    if words is not None:
        parts.append(words[0])
    if scale_flips is not None:
        f32 = Float32Codec()
        c_u, c_mask = scale_flips
        scales = scales.clone()
        scales[c_u] = f32.decode(f32.encode(scales[c_u]) ^ c_mask)
        parts.append((c_u[:, None] * slot.group + torch.arange(slot.group, dtype=torch.int64)).reshape(-1))
    local = torch.cat(parts).unique() if len(parts) > 1 else parts[0]
    local_dev = local.to(slot.flat.device)
    orig_dev = slot.flat.index_select(0, local_dev)
    saved.append((slot.flat, local_dev, orig_dev))
    chan = local // slot.group
    q = codec.encode_q(orig_dev.cpu(), slot.scales[chan])
    if words is not None:
        mask = torch.zeros(local.numel(), dtype=torch.int64)
        mask[torch.searchsorted(local, words[0])] = words[1]
        q = q ^ mask
    slot.flat.index_copy_(0, local_dev, codec.decode_q(q, scales[chan]).to(slot.flat.device))


FAMILIES = {"word": WordFamily, "scaled": ScaledFamily}
