"""The base data module: splits, loaders, profiling and evaluation subsets over uint8 tensors."""
from __future__ import annotations

import inspect
from typing import Mapping

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..checks import expect_bool, expect_int, expect_list, expect_number, fail
from ..registry import ConfigError

from .sampling import split_off, stratified_subset
from .tensors import BatchTransform, ImageTensorDataset, channel_stats, normalise


class DatasetNotFoundError(ConfigError):
    """A dataset is neither on disk nor downloadable; the message says how to fix it."""


class TensorDataModule(L.LightningDataModule):
    """Shared logic; subclasses implement ``load_raw() -> (train_x, train_y, test_x, test_y)``.

    Args:
        batch_size: training batch size (``train_baseline`` may override it from the train config).
        eval_batch_size: batch size of val/test/profile loaders.
        val_size: images carved from the training split for validation (stratified, seeded).
        train_subset, val_subset, test_subset: optional sizes of stratified seeded subsets for
            quick runs (None = everything).
        seed: seeds the split, the subsets, the shuffle and the augmentation.
        augment: random crop with ``pad`` pixels of zero padding and horizontal flip if ``flip``.
        crop_scale: with augmentation, a random resized crop of at least this area fraction
            instead of the padded crop (ImageNet-style training: 0.08); None = padded crop.
        mean, std: per-channel normalisation (e.g. ImageNet's for pretrained models); None = the
            statistics of the training images.
    """

    name = "tensor"
    num_classes = 0
    in_channels = 3
    image_size = 32
    #: arguments that change what a run computes: the stage keys read these (never paths or workers)
    RESULT_KEYS = ("batch_size", "val_size", "train_subset", "val_subset", "test_subset", "seed", "augment",
                   "pad", "flip", "crop_scale", "mean", "std")

    @classmethod
    def check_config(cls, cfg: Mapping) -> None:
        """A one-line ConfigError for a bad argument value, before anything is loaded."""
        for key, minimum in (("batch_size", 1), ("eval_batch_size", 1), ("val_size", 1), ("pad", 0),
                             ("num_workers", 0), ("seed", None)):
            if key in cfg:
                expect_int(cfg[key], f"dataset.{key}", minimum)
        for key in ("train_subset", "val_subset", "test_subset"):
            if key in cfg:
                expect_int(cfg[key], f"dataset.{key}", 1, allow_none=True)
        for key in ("augment", "flip"):
            if key in cfg:
                expect_bool(cfg[key], f"dataset.{key}")
        expect_number(cfg.get("crop_scale"), "dataset.crop_scale", 0, 1, low_open=True, allow_none=True)
        for key, low in (("mean", None), ("std", 0)):
            if cfg.get(key) is not None:
                for value in expect_list(cfg[key], f"dataset.{key}"):
                    expect_number(value, f"dataset.{key}", low, low_open=low is not None)
        if (cfg.get("mean") is None) != (cfg.get("std") is None):
            fail("dataset.mean", cfg.get("mean"), "set dataset.mean and dataset.std together (or both null: "
                 "the training images' statistics)")

    @classmethod
    def split_sizes(cls, cfg: Mapping) -> dict[str, int] | None:
        """Images of the raw ``train`` and ``test`` splits, known without decoding (counts.py checks
        every requested image count against them before any work); None when unknown."""
        return None

    @classmethod
    def default(cls, name: str):
        """A constructor argument's default (a subclass's own wins)."""
        for klass in cls.__mro__:
            if "__init__" in vars(klass):
                param = inspect.signature(klass.__init__).parameters.get(name)
                if param is not None and param.default is not inspect.Parameter.empty:
                    return param.default
        raise KeyError(name)

    def identity(self) -> dict:
        """What the data is, independent of where it lies (part of every stage key)."""
        return {"data": type(self).__name__}

    def __init__(self, batch_size: int = 128, eval_batch_size: int = 512, val_size: int = 5000,
                 train_subset: int | None = None, val_subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, augment: bool = True,
                 pad: int = 4, flip: bool = True, num_workers: int = 0, crop_scale: float | None = None,
                 mean: list[float] | None = None, std: list[float] | None = None):
        super().__init__()
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_size, self.seed = int(val_size), int(seed)
        self.train_subset, self.val_subset, self.test_subset = train_subset, val_subset, test_subset
        self.augment, self.pad, self.flip = augment, int(pad), bool(flip)
        self.num_workers = int(num_workers)
        self.crop_scale = None if crop_scale is None else float(crop_scale)
        self.given_stats = (list(mean), list(std)) if mean is not None else None
        self.splits: dict[str, ImageTensorDataset] = {}
        self.mean: list[float] = []
        self.std: list[float] = []

    def load_raw(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # Lightning calls setup once per stage; the splits never change.
            return
        train_x, train_y, test_x, test_y = self.load_raw()
        if self.val_size >= len(train_y):
            raise ValueError(f"val_size={self.val_size} leaves no training images (training split has {len(train_y)})")
        rest, val = split_off(train_y, self.val_size, self.seed)
        # Normalise with the given statistics, or those of the training images only (after carving val out).
        self.mean, self.std = self.given_stats or channel_stats(train_x[rest])
        if len(self.mean) != train_x.shape[1] or len(self.std) != train_x.shape[1]:
            raise ConfigError(f"dataset.mean/std have {len(self.mean)}/{len(self.std)} values; the images have "
                              f"{train_x.shape[1]} channels")
        # Different seed offsets so the subset draws are not correlated with the val draw.
        rest = rest[stratified_subset(train_y[rest], self.train_subset, self.seed + 1)]
        val = val[stratified_subset(train_y[val], self.val_subset, self.seed + 2)]
        test = stratified_subset(test_y, self.test_subset, self.seed + 3)
        self.splits = {
            "train": ImageTensorDataset(train_x[rest], train_y[rest]),
            "val": ImageTensorDataset(train_x[val], train_y[val]),
            "test": ImageTensorDataset(test_x[test], test_y[test]),
        }

    # -- loaders ------------------------------------------------------------------------------------

    def _split(self, split: str) -> ImageTensorDataset:
        if not self.splits:
            self.setup()
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}'; choose one of: train, val, test")
        return self.splits[split]

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False,
                          collate_fn=BatchTransform(self.mean, self.std), num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        dataset = self._split("train")
        pad, flip, scale = (self.pad, self.flip, self.crop_scale) if self.augment else (0, False, None)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed),
                          collate_fn=BatchTransform(self.mean, self.std, pad, flip, self.seed, scale),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split("val"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split("test"))

    def profile_dataloader(self, num_images: int | None = None) -> DataLoader:
        """Training images with evaluation transforms (no augmentation), stratified seeded subset."""
        train = self._split("train")
        index = stratified_subset(train.labels, num_images, self.seed + 4)
        return self._eval_loader(ImageTensorDataset(train.images[index], train.labels[index]))

    def eval_tensors(self, split: str = "test", num_images: int | None = None, seed: int = 0):
        """A stratified seeded subset of ``val`` or ``test`` as normalised tensors in memory."""
        if split not in ("val", "test"):
            raise ValueError(f"eval_tensors split must be 'val' or 'test', got '{split}'")
        data = self._split(split)
        index = stratified_subset(data.labels, num_images, seed)
        return normalise(data.images[index], self.mean, self.std), data.labels[index].clone()
