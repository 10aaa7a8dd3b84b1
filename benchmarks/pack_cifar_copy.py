"""Pack the CIFAR-10 ImageFolder copy into one file of raw JPEG bytes, to travel to a GPU machine.

    python benchmarks/pack_cifar_copy.py                      # /work/shared/data/cifar10 -> .gpu/cifar10_jpeg.npz
    python benchmarks/pack_cifar_copy.py --per-class 20 --out /tmp/tiny.npz   # a tiny pack for tests

The npz holds, without pickles: ``data`` (every file's bytes, concatenated, uint8), ``offsets``
(int64, n + 1: file i is data[offsets[i]:offsets[i + 1]]), ``labels`` (int64), ``split`` (uint8: 0
train, 1 test) and ``classes`` (the folder names, sorted). Files are in (split, class, file name)
order, so the same tree gives the same pack. The JPEGs are not re-encoded: decoding the pack gives
exactly the pixels the ImageFolder data module decodes. ``--site DIR`` also copies the pure-Python
packages the GPU script needs and a bare GPU machine may lack (omegaconf, antlr4: the
fitact_pipeline modules it imports read configs with omegaconf) into DIR.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
SITE_PACKAGES = ("omegaconf", "antlr4")


def list_files(root: Path, per_class: int | None = None) -> tuple[list[Path], list[int], list[int], list[str]]:
    """(paths, labels, splits, classes) of the tree's JPEGs in (split, class, name) order."""
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    paths, labels, splits = [], [], []
    for s, split in enumerate(SPLITS):
        for c, name in enumerate(classes):
            files = sorted(p for p in (root / split / name).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
            files = files[:per_class] if per_class else files
            paths += files
            labels += [c] * len(files)
            splits += [s] * len(files)
    return paths, labels, splits, classes


def pack(root: str | os.PathLike, out: str | os.PathLike, per_class: int | None = None) -> dict:
    """Write the pack; returns its counts and size."""
    paths, labels, splits, classes = list_files(Path(root), per_class)
    blobs = [p.read_bytes() for p in paths]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, data=data, offsets=offsets, labels=np.array(labels, dtype=np.int64),
             split=np.array(splits, dtype=np.uint8), classes=np.array(classes))
    return {"files": len(paths), "train": splits.count(0), "test": splits.count(1), "bytes": out.stat().st_size,
            "out": str(out)}


def copy_site(dest: str | os.PathLike) -> list[str]:
    """Copy the pure-Python packages of SITE_PACKAGES from this interpreter into ``dest``."""
    import importlib

    copied = []
    for name in SITE_PACKAGES:
        src = Path(importlib.import_module(name).__file__).parent
        target = Path(dest) / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        copied.append(str(target))
    return copied


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="/work/shared/data/cifar10")
    p.add_argument("--out", default=str(here / ".gpu" / "cifar10_jpeg.npz"))
    p.add_argument("--per-class", type=int, default=None, help="first N files of each class and split (tests)")
    p.add_argument("--site", default=None, help="also copy omegaconf and antlr4 into this folder")
    a = p.parse_args()
    print(pack(a.root, a.out, a.per_class))
    if a.site:
        print(copy_site(a.site))


if __name__ == "__main__":
    main()
