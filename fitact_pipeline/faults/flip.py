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

from .formats import Codec, FixedCodec
from .lowbit import block_elements, block_of

if TYPE_CHECKING:  # space.py imports this module
    from .space import FaultSpace, Slot


def restore(saved: list) -> None:
    # reverse order so that, were a slot ever touched twice, the oldest values win
    for flat, index, orig in reversed(saved):
        if isinstance(flat, np.ndarray):
            flat[index] = orig
        else:
            flat.index_copy_(0, index, orig)


def _combine(first: np.ndarray, per_bit: np.ndarray) -> np.ndarray:
    """OR the per-bit words of each element (runs marked by ``first``) into one word per element."""
    out = per_bit[first]
    more = np.flatnonzero(~first)  # further bits of an element (rare): OR them into its word
    if more.size:
        np.bitwise_or.at(out, np.cumsum(first)[more] - 1, per_bit[more])
    return out


class Faults:
    """The faults of one trial on a fault space's elements: which bits (``masks``) and, for
    stuck-at, the values they are stuck at (``stuck``; None: the bits flip)."""

    def __init__(self, masks: np.ndarray, stuck: np.ndarray | None):
        self.masks, self.stuck = masks, stuck

    def xor(self, words: np.ndarray) -> np.ndarray:
        """The XOR that applies the faults to ``words``: a flip toggles its bit; a stuck bit changes
        only when the word holds the other value."""
        return self.masks if self.stuck is None else (words ^ self.stuck) & self.masks

    def take(self, index) -> "Faults":
        return Faults(self.masks[index], None if self.stuck is None else self.stuck[index])


def _element_faults(space: "FaultSpace", field_idx, elements, bits, values) -> tuple[np.ndarray, Faults]:
    """(global element index, Faults) per touched element, elements sorted and unique."""
    glob = space.field_elem_offset.numpy()[field_idx.numpy()] + elements.numpy()  # sorted: fields in slot order
    first = np.ones(glob.size, dtype=bool)
    np.not_equal(glob[1:], glob[:-1], out=first[1:])
    one_bit = np.left_shift(1, bits.numpy())
    stuck = None if values is None else _combine(first, one_bit * values.numpy())
    return glob[first], Faults(_combine(first, one_bit), stuck)


def apply_words(codec, values: np.ndarray, faults: Faults) -> tuple[np.ndarray, int]:
    """(faulty values, bits changed) of float32 ``values`` under ``faults``."""
    words = codec.encode_np(values)
    xor = faults.xor(words)
    return codec.decode_np(words ^ xor), int(np.bitwise_count(xor).sum())


class WordFamily:
    """One word per value (fixed point, float32/16, bfloat16, fp8): one buffer, one encode/XOR/decode."""

    one_buffer = True

    @staticmethod
    def quantise(codec: Codec, slot: "Slot", shape: torch.Size) -> None:
        if isinstance(codec, FixedCodec) and not bool(torch.isfinite(slot.flat).all()):
            raise ValueError(f"tensor {slot.name!r} holds inf or NaN; fixed point cannot store it")
        slot.flat.copy_(codec.quantize(slot.flat))

    @staticmethod
    def flip(space: "FaultSpace", field_idx, elements, bits, values, saved: list) -> int:
        """Apply the faults in place (saving what they overwrite); returns the bits changed."""
        uniq, faults = _element_faults(space, field_idx, elements, bits, values)
        store, codec = space.store, space.codec
        if store is not None and store.device.type == "cpu":  # numpy view of the one buffer
            store_np = store.numpy()
            orig = store_np[uniq]
            saved.append((store_np, uniq, orig))
            store_np[uniq], changed = apply_words(codec, orig, faults)
        elif store is not None:  # one gather and one scatter on the store's device
            index = torch.from_numpy(uniq).to(store.device)
            orig = store.index_select(0, index)
            saved.append((store, index, orig))
            new, changed = apply_words(codec, orig.cpu().numpy(), faults)
            store.index_copy_(0, index, torch.from_numpy(new).to(store.device))
        else:
            changed = _flip_per_slot(space, torch.from_numpy(uniq), faults, saved)
        return changed


def rows_under_maps(space: "FaultSpace", maps: list) -> tuple[torch.Tensor, list[int]]:
    """The one buffer under each of a block of maps, the model untouched: (one row per map that
    changes a bit, bits changed per map). The maps' faults go through one encode/XOR/decode
    together, where a flip and a restore per map cost as much as the pass of a small model
    (several maps per pass, multimap.py). One value per word: a fault changes only its own word."""
    store, size = space.store, space.store.numel()
    per_map = [_element_faults(space, m.field_idx, m.elements, m.bits, m.values) for m in maps]
    uniq = np.concatenate([u for u, _ in per_map])
    owner = np.repeat(np.arange(len(maps)), [u.size for u, _ in per_map])
    stuck = None if maps and maps[0].values is None else np.concatenate([f.stuck for _, f in per_map])
    faults = Faults(np.concatenate([f.masks for _, f in per_map]), stuck)
    words = space.codec.encode_np(store.index_select(0, torch.from_numpy(uniq).to(store.device)).cpu().numpy())
    xor = faults.xor(words)
    changed = np.bincount(owner, weights=np.bitwise_count(xor), minlength=len(maps)).astype(np.int64)
    row = np.cumsum(changed > 0) - 1  # row of each map that changed a bit
    hit = changed[owner] > 0
    rows = store.expand(int((changed > 0).sum()), size).clone()
    at = torch.from_numpy(row[owner[hit]] * size + uniq[hit]).to(store.device)
    rows.view(-1).index_copy_(0, at, torch.from_numpy(space.codec.decode_np(words[hit] ^ xor[hit])).to(store.device))
    return rows, changed.tolist()


def _flip_per_slot(space: "FaultSpace", uniq: torch.Tensor, faults: Faults, saved: list) -> int:
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
    new, changed = apply_words(space.codec, torch.cat(origs).numpy(), faults)
    new = torch.from_numpy(new)
    for flat, local, a, b in touched:
        flat.index_copy_(0, local, new[a:b].to(flat.device))
    return changed


def _slot_faults(elements: torch.Tensor, bits: torch.Tensor, values) -> tuple[torch.Tensor, Faults]:
    """(unique elements, their Faults) of one slot's sorted (element, bit[, value]) records."""
    el = elements.numpy()
    first = np.ones(el.size, dtype=bool)
    np.not_equal(el[1:], el[:-1], out=first[1:])
    one_bit = np.left_shift(1, bits.numpy())
    stuck = None if values is None else _combine(first, one_bit * values.numpy())
    return torch.from_numpy(el[first]), Faults(_combine(first, one_bit), stuck)


class ScaledFamily:
    """Words with a scale per block of consecutive elements (int8/int4: float32 per output channel;
    MX: E8M0 per 32 values of a row): a word fault changes one element, a scale fault its whole
    block. Arithmetic on the CPU; index tensors and saved values follow the model's device."""

    one_buffer = False

    @staticmethod
    def quantise(codec, slot: "Slot", shape: torch.Size) -> None:
        stored, scales = codec.quantize_tensor(slot.flat.view(shape))
        slot.flat.copy_(stored.reshape(-1))
        slot.scales = scales.cpu()
        slot.group, slot.block = codec.layout(shape)

    @staticmethod
    def flip(space: "FaultSpace", field_idx, elements, bits, values, saved: list) -> int:
        changed = 0
        for s, slot in enumerate(space.slots):
            words = scales = None
            for i, f in enumerate(space.fields):
                if f.slot != s:
                    continue
                sel = field_idx == i
                if bool(sel.any()):
                    part = _slot_faults(elements[sel], bits[sel], None if values is None else values[sel])
                    scales, words = (part, words) if f.is_scale else (scales, part)
            if words is not None or scales is not None:
                changed += _flip_scaled_slot(space.codec, slot, words, scales, saved)
        return changed


def _flip_scaled_slot(codec, slot: "Slot", words, scale_faults, saved: list) -> int:
    scales, parts, changed = slot.scales, [], 0
    if words is not None:
        parts.append(words[0])
    if scale_faults is not None:
        c_u, faults = scale_faults
        new_scales, changed = apply_words(codec.scale_codec, scales[c_u].numpy(), faults)
        scales = scales.clone()
        scales[c_u] = torch.from_numpy(new_scales)
        parts.append(block_elements(c_u, slot.group, slot.block))
    local = torch.cat(parts).unique() if len(parts) > 1 else parts[0]
    local_dev = local.to(slot.flat.device)
    orig_dev = slot.flat.index_select(0, local_dev)
    saved.append((slot.flat, local_dev, orig_dev))
    chan = block_of(local, slot.group, slot.block)
    q = codec.encode_q(orig_dev.cpu(), slot.scales[chan])
    if words is not None:
        at = torch.searchsorted(local, words[0])
        xor = words[1].xor(q[at].numpy())
        q[at] = q[at] ^ torch.from_numpy(xor)
        changed += int(np.bitwise_count(xor).sum())
    slot.flat.index_copy_(0, local_dev, codec.decode_q(q, scales[chan]).to(slot.flat.device))
    return changed


FAMILIES = {"word": WordFamily, "scaled": ScaledFamily}
