"""Any ``root/{train,test}/<class>/<image>`` tree, decoded once into a cache file."""
from __future__ import annotations

import functools
import hashlib
import os
from multiprocessing import Pool
from pathlib import Path

from typing import Mapping

import numpy as np
import torch
from filelock import FileLock
from PIL import Image

from ..checks import expect_bool, expect_int, expect_str
from ..registry import ConfigError
from .base import DatasetNotFoundError, TensorDataModule

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def _image_names(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir())


def list_image_folder(split_dir: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    paths, labels = [], []
    for label, cls in enumerate(classes):
        names = _image_names(split_dir / cls) if (split_dir / cls).is_dir() else []  # a class may lack test images
        paths += [str(split_dir / cls / n) for n in names]
        labels += [label] * len(names)
    return paths, labels


def fit_image(img, resize: int | None, crop: int | None):
    """Resize so the shorter side is ``resize`` (bilinear, antialiased when shrinking), then take the
    centre ``crop`` x ``crop`` square: the evaluation transform of ImageNet models, done once at
    decode time so the tree is held in memory at the size the model sees."""
    if resize is not None:
        w, h = img.size
        scale = resize / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    if crop is not None:
        w, h = img.size
        if min(w, h) < crop:
            raise ConfigError(f"dataset.crop={crop} is not allowed; an image of {w}x{h} is smaller: set dataset.resize "
                              ">= crop")
        left, top = (w - crop) // 2, (h - crop) // 2
        img = img.crop((left, top, left + crop, top + crop))
    return img


def _decode_chunk(args) -> tuple[np.ndarray | None, list[tuple[str, str]]]:
    """The decoded images of a chunk, and (path, reason) of every file that cannot be decoded."""
    paths, mode, resize, crop = args
    out, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as img:
                out.append(np.asarray(fit_image(img.convert(mode), resize, crop)))
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's errors for broken files
            reason = str(err).splitlines()[0].replace(f" '{path}'", "") if str(err) else type(err).__name__
            bad.append((path, reason))
    if bad or not out:
        return None, bad
    _check_sizes({a.shape for a in out})
    array = np.stack(out)
    return (array[..., None] if array.ndim == 3 else array), bad


def _check_sizes(shapes: set) -> None:
    if len(shapes) != 1:
        raise ConfigError(f"images in the ImageFolder tree differ in size {sorted(shapes)}; set dataset.resize and "
                         "dataset.crop")


def decode_images(paths: list[str], mode: str, processes: int, resize: int | None = None,
                  crop: int | None = None) -> torch.Tensor:
    """Decode image files into one uint8 (N, C, H, W) tensor, with a small process pool; a file
    that is not an image is a ConfigError naming it."""
    images, bad = try_decode_images(paths, mode, processes, resize, crop)
    refuse_undecodable(bad)
    return images


def try_decode_images(paths: list[str], mode: str, processes: int, resize: int | None = None,
                      crop: int | None = None) -> tuple[torch.Tensor | None, list[tuple[str, str]]]:
    """The decoded images, or None and (path, reason) of every file that cannot be decoded."""
    chunks = [(paths[i:i + 1000], mode, resize, crop) for i in range(0, len(paths), 1000)]
    if processes > 1 and len(chunks) > 1:
        with Pool(processes) as pool:
            results = pool.map(_decode_chunk, chunks)
    else:
        results = [_decode_chunk(c) for c in chunks]
    bad = [b for _, chunk_bad in results for b in chunk_bad]
    if bad:
        return None, bad
    arrays = [a for a, _ in results]
    _check_sizes({a.shape[1:] for a in arrays})
    return torch.from_numpy(np.concatenate(arrays).transpose(0, 3, 1, 2).copy()), []


def refuse_undecodable(bad: list[tuple[str, str]]) -> None:
    """Every image is verified as it is decoded: a tree with files that are not images (empty,
    truncated, another format under an image extension) is refused with the files named, rather than
    trained on without them; the user removes or replaces them (docs/training.md)."""
    if bad:
        listed = "; ".join(f"{path} ({reason})" for path, reason in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ConfigError(f"dataset.root: {len(bad)} file(s) of the ImageFolder tree cannot be decoded as "
                          f"images: {listed}{more}; remove or replace them")


class ImageFolderDataModule(TensorDataModule):
    """Any ``root/{train,test}/<class>/<image>`` tree, decoded once into a cache file.

    The tree's fingerprint hashes its relative file list with sizes (not where it lies): adding or
    replacing images re-decodes, and moving the tree (or the checkout) reuses the cache and every
    stage keyed on the data. A file lock makes parallel jobs decode once. ``resize`` (shorter side)
    and ``crop`` (centre square) apply at decode time, so images of any size and aspect are held in
    memory at the size the model sees (N x C x crop x crop bytes: a 60,000-image tree at 224 px is
    9 GB, at 64 px 0.7 GB).
    """

    RESULT_KEYS = TensorDataModule.RESULT_KEYS + ("grayscale", "resize", "crop")

    @classmethod
    def check_config(cls, cfg: Mapping) -> None:
        super().check_config(cfg)
        expect_str(cfg.get("root"), "dataset.root")
        expect_str(cfg.get("name", "imagefolder"), "dataset.name")
        expect_bool(cfg.get("grayscale", False), "dataset.grayscale")
        expect_int(cfg.get("decode_processes", 2), "dataset.decode_processes", 1)
        expect_int(cfg.get("resize"), "dataset.resize", 1, allow_none=True)
        expect_int(cfg.get("crop"), "dataset.crop", 1, allow_none=True)
        check_tree(Path(cfg["root"]).expanduser())

    @classmethod
    def split_sizes(cls, cfg: Mapping) -> dict[str, int]:
        root = Path(cfg["root"]).expanduser()
        train = _class_dirs(root / "train")
        return {split: _count_images(str(root / split), tuple(train)) for split in ("train", "test")}

    def __init__(self, root: str, name: str = "imagefolder", cache_dir: str = ".cache/data",
                 grayscale: bool = False, decode_processes: int = 2, resize: int | None = None,
                 crop: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.resize, self.crop = resize, crop
        self.root = Path(root).expanduser()
        self.name, self.cache_dir = name, Path(cache_dir)
        self.mode = "L" if grayscale else "RGB"
        self.in_channels = 1 if grayscale else 3
        self.decode_processes = int(decode_processes)
        check_tree(self.root)
        self.classes = _class_dirs(self.root / "train")
        self.num_classes = len(self.classes)
        self.image_size = self._first_image_size()
        self._fingerprint: str | None = None

    def _first_image_size(self) -> int:
        if self.crop is not None:
            return int(self.crop)
        for cls in self.classes:  # the first image that opens: a broken one is named when the tree is decoded
            for name in _image_names(self.root / "train" / cls):
                try:
                    with Image.open(self.root / "train" / cls / name) as img:
                        w, h = img.size
                except (OSError, SyntaxError):
                    continue
                return h if self.resize is None else max(1, round(h * self.resize / min(w, h)))
        refuse_undecodable([(str(self.root / "train"), "no image under train/ can be opened")])

    def fingerprint(self) -> str:
        """Hash of the relative file list with sizes, and the colour mode."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.mode.encode())
            for split in ("train", "test"):
                for cls in self.classes:
                    folder = self.root / split / cls
                    for entry in sorted(os.scandir(folder), key=lambda e: e.name) if folder.is_dir() else ():
                        digest.update(f"{split}/{cls}/{entry.name}:{entry.stat().st_size};".encode())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    def identity(self) -> dict:
        return {"data": type(self).__name__, "fingerprint": self.fingerprint()}

    def cache_path(self) -> Path:
        sizes = "".join(f"-{k}{v}" for k, v in (("r", self.resize), ("c", self.crop)) if v is not None)
        return self.cache_dir / f"{self.name}-{self.fingerprint()}{sizes}.pt"

    def prepare_data(self) -> None:
        self._load_or_decode()

    def _load_or_decode(self) -> dict:
        path = self.cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.exists():
                return torch.load(path, weights_only=True)
            data, bad = {}, []
            for split in ("train", "test"):  # both splits, so every broken file is named at once
                paths, labels = list_image_folder(self.root / split, self.classes)
                images, split_bad = try_decode_images(paths, self.mode, self.decode_processes, self.resize, self.crop)
                data[f"{split}_x"], data[f"{split}_y"] = images, torch.tensor(labels, dtype=torch.long)
                bad += split_bad
            refuse_undecodable(bad)
            tmp = path.with_suffix(".tmp")
            torch.save(data, tmp)
            os.replace(tmp, path)  # atomic: a reader never sees a half-written cache
            return data

    def load_raw(self):
        d = self._load_or_decode()
        return d["train_x"], d["train_y"], d["test_x"], d["test_y"]


@functools.lru_cache(maxsize=16)
def _empty_files(root: str, train: tuple, test: tuple) -> list[str]:
    """0-byte image files (once per process: preflight checks every job of a sweep on one tree)."""
    base = Path(root)
    return [f"{split}/{c}/{n}" for split, classes in (("train", train), ("test", test)) for c in classes
            for n in _image_names(base / split / c) if (base / split / c / n).stat().st_size == 0]


@functools.lru_cache(maxsize=16)
def _count_images(split_dir: str, classes: tuple) -> int:
    return len(list_image_folder(Path(split_dir), list(classes))[0])


def check_tree(root: Path) -> None:
    """The tree has train/ and test/ with class folders of images, test's classes among train's."""
    fix = "set dataset.root to a folder with train/<class>/<image> and test/<class>/<image>"
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DatasetNotFoundError(f"ImageFolder root '{root}' has no '{split}/' folder; {fix}")
    train, test = _class_dirs(root / "train"), _class_dirs(root / "test")
    if not train or not any(_image_names(root / "train" / c) for c in train):
        raise DatasetNotFoundError(f"ImageFolder root '{root}' has no images under train/<class>/ "
                                   f"(extensions {', '.join(IMAGE_EXTENSIONS)}); {fix}")
    if not any(_image_names(root / "test" / c) for c in test):
        raise DatasetNotFoundError(f"ImageFolder root '{root}' has no images under test/<class>/; {fix}")
    with_images = [c for c in train if _image_names(root / "train" / c)]
    if len(with_images) < 2:
        raise DatasetNotFoundError(f"ImageFolder root '{root}' has one class with images under train/ "
                                   f"('{with_images[0]}'): a classifier needs at least two class folders; {fix}")
    empty = _empty_files(str(root), tuple(train), tuple(test))
    if empty:
        raise DatasetNotFoundError(f"ImageFolder root '{root}' has {len(empty)} empty (0-byte) image file(s): "
                                   f"{', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''}; remove or replace them")
    extra = sorted(set(test) - set(train))
    if extra:
        raise DatasetNotFoundError(f"ImageFolder root '{root}': test/ has classes that train/ lacks: "
                                   f"{', '.join(extra[:5])}; {fix}")
