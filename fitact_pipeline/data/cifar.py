"""CIFAR-10 / CIFAR-100 through torchvision's datasets (and its downloader)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from typing import Mapping

from ..checks import expect_bool, expect_str
from .base import DatasetNotFoundError, TensorDataModule


class _TorchvisionCIFAR(TensorDataModule):
    tv_class_name = ""
    pretty = ""
    folder = ""

    @classmethod
    def check_config(cls, cfg: Mapping) -> None:
        super().check_config(cfg)
        expect_str(cfg.get("root", "data"), "dataset.root")
        expect_bool(cfg.get("download", True), "dataset.download")
        folder = Path(cfg.get("root", "data")).expanduser() / cls.folder
        if not cfg.get("download", True) and not folder.is_dir():
            raise DatasetNotFoundError(
                f"{cls.pretty} not found: dataset.download=false and dataset.root='{folder.parent}' has no "
                f"'{cls.folder}/'; set dataset.root to a folder that contains it, or dataset.download=true")

    @classmethod
    def split_sizes(cls, cfg: Mapping) -> dict[str, int]:
        return {"train": 50000, "test": 10000}  # CIFAR-10 and CIFAR-100 alike

    def identity(self) -> dict:
        return {"data": type(self).__name__}  # torchvision's CIFAR is the same data wherever it lies

    def __init__(self, root: str = "data", download: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download = str(root), bool(download)

    def prepare_data(self) -> None:
        self._torchvision(train=True)

    def _torchvision(self, train: bool):
        """Open (and if allowed download) the torchvision dataset; clean up after a failed download."""
        import torchvision.datasets as tvd  # slow to import, and only this data module needs it

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
