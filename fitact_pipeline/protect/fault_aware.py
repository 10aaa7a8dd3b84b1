"""Fault-aware bound training: the gradient of the loss of the model under a sampled fault map.

A ``FaultyTwin`` is a copy of the model being trained whose weights and biases are stored in the
campaign's number format and hit, at every training step, by a fresh fault map at one bit error
rate; its bounded activations share their ``bound`` (and ``lower``) Parameters with the trained
model, so the loss of the faulty twin has a gradient with respect to exactly the trained bounds.
The model being trained is never quantised or faulted (its weights stay the deployed ones).

Fault maps come from the injector's sampler at seed ``SEED`` and trial indices from ``TRIAL_OFFSET``
on, which no campaign reaches (campaign trials start at 0, the designs' pilots at 10^6), so bound
training never sees a test fault map. Bounds are not in the twin's fault space: a flipped bound
would be restored after the step and undo its update.

Why a gradient and not a loss: the twin's faulty weights are restored when the step's fault map is
removed, which changes tensors autograd saved for the backward pass, so the backward pass runs
inside the fault map (``torch.autograd.grad``) and the step's loss gets the linear term
sum(g * b), whose gradient is g (``surrogate``).
"""
from __future__ import annotations

import copy
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..faults import FaultInjector
from .protections.fitact import FitReLU, set_fitrelu_hard

SEED = 0
TRIAL_OFFSET = 2_000_000
#: the tensors of the twin that take faults (bounds never: see the module docstring)
TWIN_TARGETS = ("weight", "bias")


class FaultyTwin:
    """The faulty copy of ``model`` (its FitReLU bounds shared) and the injector of its weights."""

    def __init__(self, model: nn.Module, rate: float, weight: float, faults: Mapping | None = None):
        self.rate, self.weight = float(rate), float(weight)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        sites = {n: m for n, m in model.named_modules() if isinstance(m, FitReLU)}
        self.bounds: list[nn.Parameter] = []
        for name, twin in self.model.named_modules():
            if name in sites:
                for key, tensor in sites[name].bound_tensors().items():
                    setattr(twin, key, tensor)  # the same Parameter: gradients reach the trained bound
                    self.bounds.append(tensor)
        set_fitrelu_hard(self.model, False)  # the smooth form: bounds get a gradient
        kwargs = {k: v for k, v in dict(faults or {}).items() if k in ("fmt", "word_bits", "frac_bits", "include",
                                                                       "exclude")}
        self.injector = FaultInjector(self.model, targets=TWIN_TARGETS, **kwargs)
        self.last_loss = float("nan")

    def surrogate(self, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        """A term whose gradient w.r.t. the bounds is ``weight`` x the gradient of the twin's
        cross-entropy under the fault map of ``step``; 0 when every logit row is non-finite."""
        with self.injector.inject(self.rate, SEED, TRIAL_OFFSET + int(step)):
            logits = self.model(x)
            finite = torch.isfinite(logits).all(dim=1)  # a non-finite row would poison every gradient
            if not bool(finite.any()):
                self.last_loss = float("nan")
                return x.new_zeros(())
            loss = F.cross_entropy(logits[finite], y[finite])
            grads = torch.autograd.grad(self.weight * loss, self.bounds, allow_unused=True)
        self.last_loss = float(loss.detach())
        # a rare inf * 0 inside the faulty pass must not move a bound to NaN
        return sum((torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0) * b).sum()
                   for g, b in zip(grads, self.bounds) if g is not None)
