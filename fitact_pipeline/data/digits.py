"""scikit-learn's bundled 8x8 digits: the embedded default, no download."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from ..checks import expect_int, fail
from .base import TensorDataModule

DIGITS_IMAGES = 1797
from .sampling import split_off


class DigitsDataModule(TensorDataModule):
    """scikit-learn's 8x8 digits (1797 images, 10 classes, 1 channel).

    The set has no test split, so a stratified seeded ``test_size`` is carved first, then
    ``val_size`` from the rest. Augmentation is a 1-pixel-pad random crop and no flip: a mirrored
    digit is a different (or no) digit, and 4 pixels of padding would be half the image.
    """

    name = "digits"
    num_classes = 10
    in_channels = 1
    image_size = 8
    RESULT_KEYS = TensorDataModule.RESULT_KEYS + ("test_size",)

    @classmethod
    def check_config(cls, cfg: Mapping) -> None:
        super().check_config(cfg)
        if "test_size" in cfg:
            expect_int(cfg["test_size"], "dataset.test_size", 1)
        used = cfg.get("test_size", 360) + cfg.get("val_size", 300)
        if used >= DIGITS_IMAGES:
            fail("dataset.val_size", cfg.get("val_size", 300), f"val_size + test_size must leave training images "
                 f"(digits has {DIGITS_IMAGES}; test_size={cfg.get('test_size', 360)})")

    @classmethod
    def split_sizes(cls, cfg: Mapping) -> dict[str, int]:
        test = cfg.get("test_size", 360)
        return {"train": DIGITS_IMAGES - test, "test": test}

    def __init__(self, val_size: int = 300, test_size: int = 360, pad: int = 1, flip: bool = False,
                 batch_size: int = 64, **kwargs):
        super().__init__(val_size=val_size, pad=pad, flip=flip, batch_size=batch_size, **kwargs)
        self.test_size = int(test_size)

    def load_raw(self):
        from sklearn.datasets import load_digits  # scikit-learn: slow to import, only for this data

        digits = load_digits()
        # Values are 0..16: rescale to 0..255 uint8 so all modules share one code path.
        images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        # The test split follows `seed` too (offset so it is not the same draw as val).
        train, test = split_off(labels, self.test_size, self.seed + 100)
        return images[train], labels[train], images[test], labels[test]
