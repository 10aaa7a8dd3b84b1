"""The FT-ClipAct search's prefix reuse: score a site's candidates from its stage's faulted input.

Every candidate threshold of a site is scored on the same fault maps, and nothing before the stage
that reads the site's bound depends on that bound. So, per fault map, the input of that stage is
computed once (under the map, in the scoring batches) and each candidate runs only the stages from
there on. The stages are the ones prefix reuse in campaigns cuts a model into (faults/prefix.py); a
stage's modules run on exactly the values a full pass gives them, so a score equals the full pass's
bit for bit (tests/test_clipact_search.py compares every score of a search both ways).

Where it does not apply, full passes run: a model that is neither a chain nor traceable by torch.fx,
a site in the first stage, and the maps beyond ``MAX_BYTES`` of cached inputs.
"""
from __future__ import annotations

import torch
from torch import nn

from ..evaluate import eval_mode, float32_inference, predict_rows
from ..faults.prefix import Stage, first_reader

#: at most this many bytes of cached stage inputs per site; further maps are scored by full passes
MAX_BYTES = 2 * 1024 ** 3


class FaultedPrefix:
    """The faulted input of the stage reading ``site``'s bound, per fault map, for one site's search."""

    def __init__(self, model: nn.Module, stages: list[Stage], site: str):
        self.model = model
        self.start = first_reader(stages, f"{site}.bound")
        self.head = [s.module for s in stages[:self.start]]
        self.tail = [s.module for s in stages[self.start:]]
        self.inputs: dict[tuple, list[torch.Tensor]] = {}
        self.bytes = 0

    def accuracy(self, key: tuple, images: torch.Tensor, labels: torch.Tensor, batch_size: int, full_pass) -> float:
        """Accuracy under the fault map now applied to the model, ``key`` naming that map; the same
        as ``full_pass(model, images, labels, batch_size)``."""
        if self.start == 0:
            return full_pass(self.model, images, labels, batch_size)
        batches = self.inputs.get(key)
        if batches is None:
            batches = self._head_outputs(images, batch_size)
            size = sum(b.numel() * b.element_size() for b in batches)
            if self.bytes + size > MAX_BYTES:
                return full_pass(self.model, images, labels, batch_size)
            self.inputs[key], self.bytes = batches, self.bytes + size
        return self._tail_accuracy(batches, labels, batch_size)

    def _head_outputs(self, images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
        device = _device(self.model, images)
        out = []
        with eval_mode(self.model), torch.inference_mode(), float32_inference(device):
            for begin in range(0, len(images), batch_size):
                x = images[begin:begin + batch_size].to(device, torch.float32)
                for module in self.head:
                    x = module(x)
                out.append(x)
        return out

    def _tail_accuracy(self, batches: list[torch.Tensor], labels: torch.Tensor, batch_size: int) -> float:
        device = _device(self.model, batches[0])
        right = 0
        with eval_mode(self.model), torch.inference_mode(), float32_inference(device):
            for i, x in enumerate(batches):
                x = x.clone()  # the site's activation may run in place
                for module in self.tail:
                    x = module(x)
                right += int((predict_rows(x.float()).cpu() == labels[i * batch_size:(i + 1) * batch_size].cpu()).sum())
        return right / len(labels)


def _device(model: nn.Module, fallback: torch.Tensor) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return fallback.device
