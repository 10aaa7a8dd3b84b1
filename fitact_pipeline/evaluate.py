"""Accuracy, counted the one way every stage counts it: a sample whose logits are not all finite is
a miss (DESIGN.md §2.1), so a fault that produces inf or NaN is data, never a crash."""
from __future__ import annotations

import torch
from torch import nn


def count_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    """Correct predictions; a row with any non-finite logit counts as a miss (DESIGN 2.1)."""
    finite = torch.isfinite(logits).all(dim=1)
    pred = torch.nan_to_num(logits, nan=0.0).argmax(dim=1)
    return int(((pred == labels.to(pred.device)) & finite).sum().item())


def evaluate_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      batch_size: int = 250, before_batch=None) -> float:
    """Top-1 accuracy in float32 (no autocast, no TF32: faulty values reach +-32768).
    ``before_batch(start, size)`` is told which images each forward pass is about to run (the
    activation fault model draws per image)."""
    if len(images) == 0:
        raise ValueError("evaluate_accuracy got no images; give at least one")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; use a positive integer")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = images.device
    was_training = model.training
    model.eval()
    correct = 0
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        with torch.inference_mode(), torch.autocast(device.type, enabled=False):
            for start in range(0, len(images), batch_size):
                x = images[start:start + batch_size].to(device, torch.float32)
                y = labels[start:start + batch_size].to(device)
                if before_batch is not None:
                    before_batch(start, len(x))
                correct += count_correct(model(x).float(), y)
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        model.train(was_training)
    return correct / len(images)



@torch.no_grad()
def accuracy(model: nn.Module, data, batch_size: int = 512) -> float:
    """Top-1 accuracy over a DataLoader of (images, labels) or an ``(images, labels)`` tensor pair,
    in eval mode (the model's mode is restored afterwards)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return evaluate_accuracy(model, data[0], data[1], batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in data:
            correct += count_correct(model(x.to(device)), y)
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy() got no samples")
    return correct / total
