"""LightningDataModules: digits, cifar10, cifar100 and any ImageFolder tree.

Every module keeps its images in memory as uint8 tensors (N, C, H, W) and does augmentation and
normalisation batch-wise on tensors: per-image PIL transforms would cost more CPU than the small
models we train on it. Loaders are ordinary ``DataLoader``s over an ``ImageTensorDataset`` whose
``__getitems__`` returns a whole batch at once, so the collate function sees one uint8 batch and
augments it in a few vectorised tensor ops.

Splits (DESIGN.md §2.5): ``val`` is a seeded, class-stratified sample carved from the training split;
``test`` is only for reporting. Every subset (quick-run sizes, profiling and evaluation sets) is a
seeded stratified sample, never the first N images, because ImageFolder trees list images class by
class.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from multiprocessing import Pool
from pathlib import Path

import lightning as L
import numpy as np
import torch
from filelock import FileLock
from torch.utils.data import DataLoader, Dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


class DatasetNotFoundError(RuntimeError):
    """A dataset is neither on disk nor downloadable; the message says how to fix it."""


# ---------------------------------------------------------------------------------------------------
# Sampling helpers


def stratified_subset(labels: torch.Tensor, num: int | None, seed: int) -> torch.Tensor:
    """Indices of a seeded random sample of ``num`` items with class proportions kept (sorted).

    Per-class quotas use largest remainders, so the quotas sum to exactly ``num``.
    """
    total = len(labels)
    if num is None or num >= total:
        return torch.arange(total)
    if num < 0:
        raise ValueError(f"subset size must be >= 0, got {num}")
    gen = torch.Generator().manual_seed(int(seed))
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * num / total
    quota = exact.floor().long()
    # Hand the leftover items to the classes with the largest fractional parts (ties: class order).
    leftover = num - int(quota.sum())
    order = torch.argsort(exact - quota, descending=True, stable=True)
    quota[order[:leftover]] += 1
    chosen = []
    for cls, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[:q]])
    return torch.sort(torch.cat(chosen)).values


def split_off(labels: torch.Tensor, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Carve a stratified seeded sample of ``num`` items: returns (rest, carved) index tensors."""
    carved = stratified_subset(labels, num, seed)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[carved] = False
    return torch.nonzero(mask).flatten(), carved


# ---------------------------------------------------------------------------------------------------
# Dataset and batch transform


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels; item access returns raw uint8 tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        assert images.dtype == torch.uint8 and images.ndim == 4 and len(images) == len(labels)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __getitems__(self, indices):
        # DataLoader calls this with the whole batch of indices: one gather instead of N.
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


class BatchTransform:
    """Collate function: random crop (zero padding) + optional horizontal flip, then normalise.

    The crop offsets and flips come from this object's own seeded generator, so a training run is
    reproducible with ``num_workers=0`` (the default; the data is in memory, workers would only add
    process start-up and copies).
    """

    def __init__(self, mean, std, pad: int = 0, flip: bool = False, seed: int = 0):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad, self.flip = int(pad), bool(flip)
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, batch):
        images, labels = batch
        if self.pad > 0:
            images = self.random_crop(images)
        if self.flip:
            flip = torch.rand(len(images), generator=self.gen) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        return normalise(images, self.mean, self.std), labels

    def random_crop(self, images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        p = self.pad
        padded = torch.nn.functional.pad(images, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=self.gen)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=self.gen)
        rows = (dy.view(n, 1) + torch.arange(h)).view(n, 1, h, 1)
        cols = (dx.view(n, 1) + torch.arange(w)).view(n, 1, 1, w)
        batch = torch.arange(n).view(n, 1, 1, 1)
        chans = torch.arange(images.shape[1]).view(1, -1, 1, 1)
        return padded[batch, chans, rows, cols]


def normalise(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units.

    Computed from a 256-bin histogram per channel: exact, and far cheaper than converting the
    whole training set to float.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).double()
        n = hist.sum()
        mean = (hist * levels).sum() / n
        var = (hist * (levels - mean) ** 2).sum() / (n - 1)
        means.append(float(mean))
        stds.append(max(float(var.sqrt()), 1e-6))
    return means, stds


# ---------------------------------------------------------------------------------------------------
# Base module


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
    """

    name = "tensor"
    num_classes = 0
    in_channels = 3
    image_size = 32

    def __init__(self, batch_size: int = 128, eval_batch_size: int = 512, val_size: int = 5000,
                 train_subset: int | None = None, val_subset: int | None = None,
                 test_subset: int | None = None, seed: int = 0, augment: bool = True,
                 pad: int = 4, flip: bool = True, num_workers: int = 0):
        super().__init__()
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.val_size, self.seed = int(val_size), int(seed)
        self.train_subset, self.val_subset, self.test_subset = train_subset, val_subset, test_subset
        self.augment, self.pad, self.flip = augment, int(pad), bool(flip)
        self.num_workers = int(num_workers)
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
        # Normalise with the statistics of the training images only (after carving val out).
        self.mean, self.std = channel_stats(train_x[rest])
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
        pad, flip = (self.pad, self.flip) if self.augment else (0, False)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed),
                          collate_fn=BatchTransform(self.mean, self.std, pad, flip, self.seed),
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


# ---------------------------------------------------------------------------------------------------
# Digits (scikit-learn, bundled, offline)


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

    def __init__(self, val_size: int = 300, test_size: int = 360, pad: int = 1, flip: bool = False,
                 batch_size: int = 64, **kwargs):
        super().__init__(val_size=val_size, pad=pad, flip=flip, batch_size=batch_size, **kwargs)
        self.test_size = int(test_size)

    def load_raw(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        # Values are 0..16: rescale to 0..255 uint8 so all modules share one code path.
        images = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target.astype(np.int64))
        # The test split follows `seed` too (offset so it is not the same draw as val).
        train, test = split_off(labels, self.test_size, self.seed + 100)
        return images[train], labels[train], images[test], labels[test]


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 via torchvision


class _TorchvisionCIFAR(TensorDataModule):
    tv_class_name = ""
    pretty = ""
    folder = ""

    def __init__(self, root: str = "data", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download = str(root), bool(download)

    def prepare_data(self) -> None:
        self._torchvision(train=True)

    def _torchvision(self, train: bool):
        """Open (and if allowed download) the torchvision dataset; clean up after a failed download."""
        import torchvision.datasets as tvd

        cls = getattr(tvd, self.tv_class_name)
        root = Path(self.root).expanduser()
        existed = root.exists()
        before = set(os.listdir(root)) if existed else set()
        try:
            return cls(str(root), train=train, download=self.download)
        except Exception as err:  # network errors, missing or corrupt files: all end the same way
            self._remove_new_files(root, existed, before)
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DatasetNotFoundError(
                f"{self.pretty} not found under root='{root}' (download={self.download}: {reason}); "
                f"set dataset.root to a folder that already contains '{self.folder}/' "
                f"(e.g. dataset.root=/path/to/data), or use an ImageFolder copy (dataset=imagefolder)"
            ) from None

    @staticmethod
    def _remove_new_files(root: Path, existed: bool, before: set[str]) -> None:
        """Delete whatever a failed download created, so nothing half-downloaded is left behind."""
        if not root.exists():
            return
        if not existed:
            shutil.rmtree(root, ignore_errors=True)
            return
        for entry in set(os.listdir(root)) - before:
            path = root / entry
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def load_raw(self):
        train, test = self._torchvision(True), self._torchvision(False)
        return (*self._to_tensors(train), *self._to_tensors(test))

    @staticmethod
    def _to_tensors(ds):
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return images, torch.as_tensor(ds.targets, dtype=torch.long)


class CIFAR10DataModule(_TorchvisionCIFAR):
    name, num_classes, in_channels, image_size = "cifar10", 10, 3, 32
    tv_class_name, pretty, folder = "CIFAR10", "CIFAR-10", "cifar-10-batches-py"


class CIFAR100DataModule(_TorchvisionCIFAR):
    name, num_classes, in_channels, image_size = "cifar100", 100, 3, 32
    tv_class_name, pretty, folder = "CIFAR100", "CIFAR-100", "cifar-100-python"


# ---------------------------------------------------------------------------------------------------
# ImageFolder trees (root/train/<class>/*.jpg, root/test/<class>/*.jpg)


def list_image_folder(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(e.name for e in os.scandir(split_dir / cls)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        paths += [str(split_dir / cls / n) for n in names]
        labels += [label] * len(names)
    return paths, labels


def _decode_chunk(args) -> np.ndarray:
    paths, mode = args
    from PIL import Image

    out = []
    for path in paths:
        with Image.open(path) as img:
            out.append(np.asarray(img.convert(mode)))
    array = np.stack(out)
    return array[..., None] if array.ndim == 3 else array


def decode_images(paths: list[str], mode: str, processes: int) -> torch.Tensor:
    """Decode image files into one uint8 (N, C, H, W) tensor, with a small process pool."""
    chunks = [(paths[i:i + 1000], mode) for i in range(0, len(paths), 1000)]
    if processes > 1 and len(chunks) > 1:
        with Pool(processes) as pool:
            arrays = pool.map(_decode_chunk, chunks)
    else:
        arrays = [_decode_chunk(c) for c in chunks]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images in the ImageFolder tree differ in size {sorted(shapes)}; resize them first")
    return torch.from_numpy(np.concatenate(arrays).transpose(0, 3, 1, 2).copy())


class ImageFolderDataModule(TensorDataModule):
    """Any ``root/{train,test}/<class>/<image>`` tree, decoded once into a cache file.

    The cache key hashes the root path and the sorted file list (with sizes), so adding or replacing
    images re-decodes. A file lock makes parallel jobs decode once.
    """

    def __init__(self, root: str, name: str = "imagefolder", cache_dir: str = ".cache/data",
                 grayscale: bool = False, decode_processes: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.name, self.cache_dir = name, Path(cache_dir)
        self.mode = "L" if grayscale else "RGB"
        self.in_channels = 1 if grayscale else 3
        self.decode_processes = int(decode_processes)
        for split in ("train", "test"):
            if not (self.root / split).is_dir():
                raise DatasetNotFoundError(f"ImageFolder root '{self.root}' has no '{split}/' folder; "
                                           f"set dataset.root to a folder with train/<class>/ and test/<class>/")
        self.classes = sorted(e.name for e in os.scandir(self.root / "train") if e.is_dir())
        self.num_classes = len(self.classes)
        self.image_size = self._first_image_size()

    def _first_image_size(self) -> int:
        from PIL import Image

        first_dir = self.root / "train" / self.classes[0]
        first = sorted(p for p in os.listdir(first_dir) if p.lower().endswith(IMAGE_EXTENSIONS))[0]
        with Image.open(first_dir / first) as img:
            return img.size[1]

    def cache_path(self) -> Path:
        digest = hashlib.sha256(str(self.root.resolve()).encode() + self.mode.encode())
        for split in ("train", "test"):
            for cls in self.classes:
                for entry in sorted(os.scandir(self.root / split / cls), key=lambda e: e.name):
                    digest.update(f"{split}/{cls}/{entry.name}:{entry.stat().st_size};".encode())
        return self.cache_dir / f"{self.name}-{digest.hexdigest()[:16]}.pt"

    def prepare_data(self) -> None:
        self._load_or_decode()

    def _load_or_decode(self) -> dict:
        path = self.cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.exists():
                return torch.load(path, weights_only=True)
            data = {}
            for split in ("train", "test"):
                paths, labels = list_image_folder(self.root / split, self.classes)
                data[f"{split}_x"] = decode_images(paths, self.mode, self.decode_processes)
                data[f"{split}_y"] = torch.tensor(labels, dtype=torch.long)
            tmp = path.with_suffix(".tmp")
            torch.save(data, tmp)
            os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
            return data

    def load_raw(self):
        d = self._load_or_decode()
        return d["train_x"], d["train_y"], d["test_x"], d["test_y"]
