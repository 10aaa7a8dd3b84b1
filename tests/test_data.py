"""Data modules: splits, stratified subsets, augmentation, CIFAR on-disk format, ImageFolder cache."""

import hashlib
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from fitact_pipeline.data import imagefolder as data_mod
from fitact_pipeline.data.sampling import StratifiedSampler
from fitact_pipeline.data import (BatchTransform, CIFAR10DataModule, CIFAR100DataModule, DatasetNotFoundError,
                                  DigitsDataModule, ImageFolderDataModule, split_off, stratified_subset)

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


# -- sampling -----------------------------------------------------------------------------------------

def test_stratified_subset_keeps_class_proportions_and_is_seeded():
    labels = torch.arange(10).repeat_interleave(100)  # sorted class by class, like ImageFolder
    idx = stratified_subset(labels, 200, seed=1)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200
    assert torch.bincount(labels[idx]).tolist() == [20] * 10  # not the first 200 (= two classes)
    assert torch.equal(idx, stratified_subset(labels, 200, seed=1))
    assert not torch.equal(idx, stratified_subset(labels, 200, seed=2))


def _reference_subset(labels, num, seed):
    # the definition, written out plainly: largest-remainder quotas, then per class the first
    # `quota` of one seeded permutation of its members, classes in order, one generator
    gen = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.double() * num / len(labels)
    quota = exact.floor().long()
    quota[torch.argsort(exact - quota, descending=True, stable=True)[:num - int(quota.sum())]] += 1
    picked = [torch.nonzero(labels == c).flatten()[torch.randperm(int(n), generator=gen)[:q]]
              for c, n, q in zip(classes.tolist(), counts.tolist(), quota.tolist())]
    return torch.sort(torch.cat(picked)).values


def test_a_reused_sampler_draws_the_subsets_of_the_definition():
    labels = torch.randint(0, 7, (300,), generator=torch.Generator().manual_seed(4))
    sampler = StratifiedSampler(labels)  # its cached quotas must not leak between sizes
    for num in (20, 5, 20, 299, 1, 0, 137):
        for seed in (0, 3, 12345):
            assert torch.equal(sampler.subset(num, seed), _reference_subset(labels, num, seed)), (num, seed)
    assert torch.equal(sampler.subset(300, 0), torch.arange(300))


def test_stratified_subset_uneven_quotas_sum_exactly():
    labels = torch.tensor([0] * 7 + [1] * 3 + [2] * 5)
    for n in range(0, 16):
        assert len(stratified_subset(labels, n, seed=0)) == n


def test_split_off_is_a_partition():
    labels = torch.randint(0, 5, (500,), generator=torch.Generator().manual_seed(0))
    rest, carved = split_off(labels, 50, seed=3)
    assert len(carved) == 50 and len(rest) == 450
    assert sorted(torch.cat([rest, carved]).tolist()) == list(range(500))


# -- augmentation -------------------------------------------------------------------------------------

def test_random_crop_returns_windows_of_the_padded_image():
    images = torch.randint(1, 256, (16, 3, 6, 6), dtype=torch.uint8)
    t = BatchTransform([0, 0, 0], [1 / 255] * 3, pad=2, flip=False, seed=0)
    cropped = t.random_crop(images)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    offsets = set()
    for i in range(16):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if torch.equal(cropped[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert hits, "crop is not a window of the padded image"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets really vary


def test_flip_mirrors_some_images_and_normalises():
    images = torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8)
    out, _ = BatchTransform([0.5], [0.25], pad=0, flip=True, seed=0)((images, torch.zeros(64)))
    plain = (images.float() / 255 - 0.5) / 0.25
    same = [torch.allclose(out[i], plain[i]) for i in range(64)]
    mirrored = [torch.allclose(out[i], plain[i].flip(-1)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54


# -- digits -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    dm = DigitsDataModule(seed=0)
    dm.setup()
    return dm


def test_digits_splits_and_attributes(digits):
    assert (digits.name, digits.num_classes, digits.in_channels, digits.image_size) == ("digits", 10, 1, 8)
    sizes = {k: len(v) for k, v in digits.splits.items()}
    assert sizes == {"train": 1797 - 360 - 300, "val": 300, "test": 360}
    assert torch.bincount(digits.splits["val"].labels).min() >= 28  # stratified: ~30 per class


def test_digits_train_loader_is_normalised_augmented_and_seeded(digits):
    x, y = next(iter(digits.train_dataloader()))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.3
    x2, y2 = next(iter(digits.train_dataloader()))
    assert torch.equal(x, x2) and torch.equal(y, y2)  # same seed, same first batch
    other = DigitsDataModule(seed=1)
    other.setup()
    assert not torch.equal(next(iter(other.train_dataloader()))[1], y)


def test_eval_tensors_and_profile_loader(digits):
    x, y = digits.eval_tensors("test", 100, seed=0)
    assert x.shape == (100, 1, 8, 8) and torch.bincount(y).tolist() == [10] * 10
    x_again, _ = digits.eval_tensors("test", 100, seed=0)
    assert torch.equal(x, x_again)
    n = sum(len(b[1]) for b in digits.profile_dataloader(50))
    assert n == 50
    with pytest.raises(ValueError, match="'val' or 'test'"):
        digits.eval_tensors("train", 10)


def test_subsets_for_quick_runs():
    dm = DigitsDataModule(train_subset=200, val_subset=50, test_subset=40)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [200, 50, 40]


# -- CIFAR in torchvision's on-disk format -------------------------------------------------------------

def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_tiny_cifar(root: Path, cls, n_train_per_batch=12, n_test=20, classes=10):
    """Write cifar-10-batches-py / cifar-100-python pickles, and point torchvision's md5 table at them."""
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    label_key = "labels" if cls is tvd.CIFAR10 else "fine_labels"
    all_data = {}
    for name, _ in cls.train_list + cls.test_list:
        n = n_test if name in ("test_batch", "test") else n_train_per_batch
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: (np.arange(n) % classes).tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
        all_data[name] = entry
    meta_key = cls.meta["key"]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({meta_key: [f"c{i}" for i in range(classes)]}))
    train_list = [[n, md5(folder / n)] for n, _ in cls.train_list]
    test_list = [[n, md5(folder / n)] for n, _ in cls.test_list]
    meta = {**cls.meta, "md5": md5(folder / cls.meta["filename"])}
    return all_data, train_list, test_list, meta


@pytest.mark.parametrize("module,cls,classes", [(CIFAR10DataModule, tvd.CIFAR10, 10),
                                                (CIFAR100DataModule, tvd.CIFAR100, 100)])
def test_cifar_reads_torchvision_format_offline(tmp_path, monkeypatch, module, cls, classes):
    per_batch = 12 if classes == 10 else 120
    raw, train_list, test_list, meta = write_tiny_cifar(tmp_path, cls, per_batch, 20, classes)
    # torchvision verifies each file's md5 against a class-level table: point it at our files.
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", test_list)
    monkeypatch.setattr(cls, "meta", meta)
    dm = module(root=str(tmp_path), download=False, val_size=10 if classes == 10 else 100)
    assert dm.num_classes == classes and dm.in_channels == 3 and dm.image_size == 32
    dm.setup()
    n_train = per_batch * len(train_list)
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == n_train
    assert len(dm.splits["test"]) == 20
    # Pixels survive the CHW conversion: the first test image is the first row of test_batch.
    first_test = raw[test_list[0][0]]["data"][0].reshape(3, 32, 32)
    assert np.array_equal(dm.splits["test"].images[0].numpy(), first_test)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and y.max() < classes


def test_cifar_missing_offline_gives_one_line_error(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        CIFAR10DataModule(root=str(root), download=False).setup()
    message = str(err.value)
    assert "\n" not in message and "dataset.root" in message and "cifar-10-batches-py" in message


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    (root / "keep.txt").write_text("user file")

    def broken_download(url, download_root, filename=None, md5=None, **kw):
        # What a dropped connection leaves: a partial archive and an extraction folder (torchvision
        # creates the root first).
        Path(download_root).mkdir(parents=True, exist_ok=True)
        Path(download_root, filename).write_bytes(b"partial")
        Path(download_root, "cifar-10-batches-py").mkdir()
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tvd.cifar, "download_and_extract_archive", broken_download)
    with pytest.raises(DatasetNotFoundError, match="network is unreachable"):
        CIFAR10DataModule(root=str(root), download=True).prepare_data()
    assert sorted(os.listdir(root)) == ["keep.txt"]

    fresh = tmp_path / "fresh"  # a root the download created is removed entirely
    with pytest.raises(DatasetNotFoundError, match="network is unreachable"):
        CIFAR10DataModule(root=str(fresh), download=True).prepare_data()
    assert not fresh.exists()


# -- ImageFolder -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    """A slice of the shared CIFAR-10 copy: 12 train and 4 test images per class (symlinks)."""
    if not SHARED_CIFAR.is_dir():
        pytest.skip("shared CIFAR-10 copy not present")
    root = tmp_path_factory.mktemp("tree")
    for split, n in (("train", 12), ("test", 4)):
        for cls in sorted(os.listdir(SHARED_CIFAR / split)):
            (root / split / cls).mkdir(parents=True)
            for name in sorted(os.listdir(SHARED_CIFAR / split / cls))[:n]:
                os.symlink(SHARED_CIFAR / split / cls / name, root / split / cls / name)
    return root


def test_imagefolder_decodes_once_then_loads_from_cache(small_tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    dm = ImageFolderDataModule(str(small_tree), name="tiny", cache_dir=str(cache), val_size=20,
                               decode_processes=1)
    assert (dm.num_classes, dm.in_channels, dm.image_size) == (10, 3, 32)
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [100, 20, 40]
    assert torch.bincount(dm.splits["val"].labels).tolist() == [2] * 10
    assert len(list(cache.glob("tiny-*.pt"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_mod, "try_decode_images", no_decode)
    again = ImageFolderDataModule(str(small_tree), name="tiny", cache_dir=str(cache), val_size=20)
    again.setup()
    assert torch.equal(again.splits["test"].images, dm.splits["test"].images)


def test_imagefolder_pixels_match_pil(small_tree, tmp_path):
    from PIL import Image

    dm = ImageFolderDataModule(str(small_tree), cache_dir=str(tmp_path), val_size=10, decode_processes=2)
    dm.setup()
    first = sorted(os.listdir(small_tree / "test" / "airplane"))[0]
    expected = np.asarray(Image.open(small_tree / "test" / "airplane" / first).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(dm.splits["test"].images[0].numpy(), expected)  # test split keeps file order


def test_imagefolder_without_split_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="train"):
        ImageFolderDataModule(str(tmp_path))
