"""Data given as DataLoaders (the Python API's case), in the shape the bounds stages read.

A job's data module splits, normalises and samples the data itself; a user of ``api.harden`` hands
over loaders instead. ``LoaderData`` gives those loaders the three calls a bounds stage makes
(``train_dataloader``, ``val_dataloader``, ``eval_tensors("val", n)``), so FitAct's post-training,
ProAct's progressive training and the FT-ClipAct search run the same code for both.
"""
from __future__ import annotations

import torch


def as_tensors(data, num_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a DataLoader (its first ``num_images`` in iteration order: pass an
    unshuffled one) or from an ``(images, labels)`` pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        images, labels = data
    else:
        xs, ys, seen = [], [], 0
        for x, y in data:
            xs.append(x)
            ys.append(y)
            seen += len(y)
            if num_images is not None and seen >= num_images:
                break
        if not xs:
            raise ValueError("the data yielded no images")
        images, labels = torch.cat(xs), torch.cat(ys)
    return (images, labels) if num_images is None else (images[:num_images], labels[:num_images])


class LoaderData:
    """A training and a validation loader, read as a bounds stage reads a data module."""

    def __init__(self, train=None, val=None):
        self.train, self.val = train, val

    def setup(self, stage=None) -> None:
        return None

    def train_dataloader(self):
        return self.train

    def val_dataloader(self):
        return self.val

    def eval_tensors(self, split: str = "val", num_images: int | None = None, seed: int = 0):
        """The first ``num_images`` validation images; decisions are never made on a test split."""
        if split != "val":
            raise ValueError(f"decisions are made on the validation loader only, not on {split!r}")
        return as_tensors(self.val, num_images)
