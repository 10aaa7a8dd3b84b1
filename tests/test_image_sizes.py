"""ImageFolder trees at any resolution: resize and centre crop at decode time, given normalisation, the
random resized crop of ImageNet-style training; and the keys of existing configs stay what they were."""
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from PIL import Image

from fitact_pipeline.data import BatchTransform, ImageFolderDataModule
from fitact_pipeline.identity import result_identity
from fitact_pipeline.keys import baseline_key
from fitact_pipeline.registry import ConfigError
from fitact_pipeline.validate import CONF_DIR, check_config


def tree(root, sizes=((40, 30), (50, 64), (33, 33))):
    """Two classes of solid-colour images of several sizes and aspects."""
    for split, count in (("train", 6), ("test", 2)):
        for c, colour in (("a", (200, 10, 10)), ("b", (10, 10, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", sizes[i % len(sizes)], colour).save(root / split / c / f"{i}.png")
    return root


def test_any_size_is_resized_and_cropped_at_decode_time(tmp_path):
    root = tree(tmp_path / "tree")
    dm = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"), val_size=2, resize=24, crop=20)
    assert dm.image_size == 20
    dm.setup()
    assert dm.splits["train"].images.shape[1:] == (3, 20, 20) and dm.splits["test"].images.shape[1:] == (3, 20, 20)
    assert dm.cache_path().name.endswith("-r24-c20.pt")
    images, labels = dm.eval_tensors("test")
    assert images.shape == (4, 3, 20, 20)
    # solid colours survive resizing: every pixel of a class-a image is red
    red = dm.splits["test"].images[dm.splits["test"].labels == 0]
    assert (red[:, 0] > 190).all() and (red[:, 2] < 20).all()
    with pytest.raises(ValueError, match=r"differ in size .*; set dataset.resize and dataset.crop"):
        ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache2"), val_size=2).setup()
    with pytest.raises(ValueError, match=r"dataset.crop=40 is not allowed; an image of 32x24 is smaller: set dataset.resize >= crop"):
        ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache3"), val_size=2, resize=24, crop=40).setup()


def test_resize_alone_keeps_the_aspect(tmp_path):
    root = tree(tmp_path / "tree", sizes=((40, 20),))
    dm = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"), val_size=2, resize=10)
    assert dm.image_size == 10
    dm.setup()
    assert dm.splits["train"].images.shape[2:] == (10, 20)


def test_given_normalisation_is_used(tmp_path):
    root = tree(tmp_path / "tree", sizes=((8, 8),))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    dm = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"), val_size=2, mean=mean, std=std)
    images, labels = dm.eval_tensors("test")
    red = images[labels == 0][0, :, 0, 0]
    assert red.tolist() == pytest.approx([(200 / 255 - mean[0]) / std[0], (10 / 255 - mean[1]) / std[1],
                                          (10 / 255 - mean[2]) / std[2]], rel=1e-5)
    wrong = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "cache"), val_size=2, mean=[0.5], std=[0.5])
    with pytest.raises(ConfigError, match="dataset.mean/std have 1/1 values; the images have 3 channels"):
        wrong.setup()


def test_random_resized_crop_is_seeded_and_keeps_the_size():
    images = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16).remainder(256).to(torch.uint8)
    images = images.repeat(8, 1, 1, 1)
    one = BatchTransform([0.5] * 3, [0.25] * 3, seed=3, crop_scale=0.08).random_resized_crop(images)
    two = BatchTransform([0.5] * 3, [0.25] * 3, seed=3, crop_scale=0.08).random_resized_crop(images)
    assert one.shape == images.shape and torch.equal(one, two)
    assert one.min() >= 0 and one.max() <= 255
    assert not torch.equal(one[0], one[2])  # the same image, two different crops
    full = BatchTransform([0.5] * 3, [0.25] * 3, seed=3, crop_scale=1.0)
    full.gen = torch.Generator().manual_seed(0)
    x, _ = full((images[:4], torch.zeros(4, dtype=torch.long)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32


def _composed(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


def test_the_resize_setting_is_in_the_baseline_key_and_the_imagenet_preset_checks(tmp_path):
    root = tree(tmp_path / "tree")
    cfg = _composed("dataset=imagefolder", f"dataset.root={root}", "dataset.val_size=2")
    dm = ImageFolderDataModule(str(root), cache_dir=str(tmp_path / "c"), val_size=2)
    cpu = torch.device("cpu")
    before = baseline_key(cfg, dm, cpu)
    cfg.dataset.resize = 24
    assert result_identity(cfg, dm, cpu)["baseline"]["data"]["resize"] == 24
    assert baseline_key(cfg, dm, cpu) != before
    preset = _composed("dataset=imagefolder224", f"dataset.root={root}", "dataset.val_size=2",
                       "model=torchvision", "model.arch=shufflenet_v2_x0_5")
    assert preset.dataset.crop == 224 and preset.dataset.mean == [0.485, 0.456, 0.406]
    check_config(preset)
    preset.dataset.crop_scale = 0
    with pytest.raises(ConfigError, match=r"dataset.crop_scale=0 is not allowed; expected a number in \(0, 1\]"):
        check_config(preset, structure=False)
