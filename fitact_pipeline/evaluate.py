"""Accuracy, counted the one way every stage counts it: a sample whose logits are not all finite is
a miss (DESIGN.md §2.1), so a fault that produces inf or NaN is data, never a crash."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def correct_rows(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row (the class scores are the last dimension): right class with all logits finite; a
    row with any non-finite logit is a miss."""
    finite = torch.isfinite(logits).all(dim=-1)
    pred = torch.nan_to_num(logits, nan=0.0).argmax(dim=-1)
    return (pred == labels.to(pred.device)) & finite


#: the prediction of a row with a non-finite logit: it matches no label and differs from every finite
#: prediction, so such a row is a miss and (faulty) a silent data corruption
MISS = -1


def predict_rows(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 class per row, MISS for a row with any non-finite logit (``correct_rows`` = this == label)."""
    finite = torch.isfinite(logits).all(dim=-1)
    pred = torch.nan_to_num(logits, nan=0.0).argmax(dim=-1)
    return torch.where(finite, pred, torch.full_like(pred, MISS))


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Correct predictions; a row with any non-finite logit counts as a miss (DESIGN 2.1)."""
    return int(correct_rows(logits, labels).sum().item())


@contextlib.contextmanager
def float32_inference(device: torch.device) -> Iterator[None]:
    """float32 only: no autocast and, on CUDA, no TF32 (faulty fixed-point values reach +-32768,
    and TF32 would change what a fault does); settings restored afterwards."""
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        with torch.autocast(device.type, enabled=False):
            yield
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def correct_mask(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250,
                 before_batch=None, image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per image: classified right (finite logits, right class)? See ``predictions``."""
    return predictions(model, images, batch_size, before_batch, image_ids) == labels.cpu()


def predictions(model: nn.Module, images: torch.Tensor, batch_size: int = 250, before_batch=None,
                image_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per image: the top-1 class, MISS where a logit is not finite (on the CPU). ``before_batch(ids)``
    is told which images (``image_ids``, default 0..N-1) each forward pass is about to run: the
    activation fault model draws its faults per image."""
    if len(images) == 0:
        raise ValueError("evaluate_accuracy got no images; give at least one")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; use a positive integer")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = images.device
    ids = torch.arange(len(images)) if image_ids is None else image_ids
    parts = []
    with eval_mode(model), torch.inference_mode(), float32_inference(device):
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device, torch.float32)
            if before_batch is not None:
                before_batch(ids[start:start + batch_size])
            parts.append(predict_rows(model(x).float()).cpu())
    return torch.cat(parts)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode inside, each module's own mode restored after. A campaign calls
    this once per trial on a model that is already in eval mode: then it only checks, because
    setting the mode walks every module and cost a tenth of a small model's trial."""
    training = [m for m in model.modules() if m.training]
    if not training:
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for m in training:
            m.training = True


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 250,
                      before_batch=None, image_ids: torch.Tensor | None = None) -> float:
    """Top-1 accuracy in float32 (see ``correct_mask``)."""
    return int(correct_mask(model, images, labels, batch_size, before_batch, image_ids).sum()) / len(images)


@torch.no_grad()
def accuracy(model: nn.Module, data, batch_size: int = 512) -> float:
    """Top-1 accuracy over a DataLoader of (images, labels) or an ``(images, labels)`` tensor pair,
    in eval mode (the model's mode is restored afterwards)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return evaluate_accuracy(model, data[0], data[1], batch_size)
    device = next(model.parameters()).device
    correct = total = 0
    with eval_mode(model):
        for x, y in data:
            correct += count_correct(model(x.to(device)), y)
            total += len(y)
    if total == 0:
        raise ValueError("accuracy() got no samples")
    return correct / total
