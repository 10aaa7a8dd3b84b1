"""Images in memory as uint8 tensors, and the batch-wise transform (augmentation, normalisation)."""
from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset


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
    """Collate function: random crop (zero padding), or a random resized crop (``crop_scale``, the
    smallest area fraction, as ImageNet training does), + optional horizontal flip, then normalise.

    The crop offsets and flips come from this object's own seeded generator, so a training run is
    reproducible with ``num_workers=0`` (the default; the data is in memory, workers would only add
    process start-up and copies).
    """

    def __init__(self, mean, std, pad: int = 0, flip: bool = False, seed: int = 0, crop_scale: float | None = None):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.pad, self.flip = int(pad), bool(flip)
        self.crop_scale = crop_scale
        self.gen = torch.Generator().manual_seed(int(seed))

    def __call__(self, batch):
        images, labels = batch
        if self.crop_scale is not None:
            images = self.random_resized_crop(images)
        elif self.pad > 0:
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

    def random_resized_crop(self, images: torch.Tensor) -> torch.Tensor:
        """A box of area fraction U(crop_scale, 1) and aspect ratio log-uniform in [3/4, 4/3]
        (sides clipped to the image) at a uniform position, resized back to the image size
        (bilinear), for the whole batch in one ``grid_sample``. Returns float values in 0..255."""
        n = images.shape[0]
        area = self.crop_scale + (1 - self.crop_scale) * torch.rand(n, generator=self.gen)
        ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * torch.rand(n, generator=self.gen))
        w, h = (area * ratio).sqrt().clamp(max=1.0), (area / ratio).sqrt().clamp(max=1.0)
        # box centre in [-1, 1] coordinates, kept inside the image
        cx = (1 - w) * (2 * torch.rand(n, generator=self.gen) - 1)
        cy = (1 - h) * (2 * torch.rand(n, generator=self.gen) - 1)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
        grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
        return torch.nn.functional.grid_sample(images.float(), grid, mode="bilinear", align_corners=False)


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
