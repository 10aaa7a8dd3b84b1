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

from .base import DatasetNotFoundError, TensorDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .digits import DigitsDataModule
from .imagefolder import IMAGE_EXTENSIONS, ImageFolderDataModule, decode_images, list_image_folder
from .sampling import split_off, stratified_subset
from .tensors import BatchTransform, ImageTensorDataset, channel_stats, normalise

__all__ = ["IMAGE_EXTENSIONS", "BatchTransform", "CIFAR10DataModule", "CIFAR100DataModule", "DatasetNotFoundError",
           "DigitsDataModule", "ImageFolderDataModule", "ImageTensorDataset", "TensorDataModule", "channel_stats",
           "decode_images", "list_image_folder", "normalise", "split_off", "stratified_subset"]
