"""Datasets by name, and the device-side batching that feeds the engine."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcompress.data.loader import Batch, DeviceTransform, ImageFormat, Loader, image_format
from kdcompress.data.sources import Dataset, read_source
from kdcompress.errors import UserError
from kdcompress.recipe import DataSpec

__all__ = ["Batch", "DataBundle", "Dataset", "ImageFormat", "Loader", "load_data", "read_source"]


@dataclass
class DataBundle:
    """A dataset as a recipe asks for it: limited, in the model's image format, ready to batch."""

    dataset: Dataset
    fmt: ImageFormat
    crop_padding: int
    flip: bool

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def transform(self, device: torch.device, train: bool) -> DeviceTransform:
        padding, flip = (self.crop_padding, self.flip) if train else (0, False)
        return DeviceTransform(self.dataset.channels, self.fmt, padding, flip, device)

    def train_loader(
        self,
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ) -> Loader:
        return Loader(
            self.dataset.train,
            self.transform(device, True),
            batch_size,
            device,
            True,
            seed,
            rank,
            world,
            workers,
        )

    def val_loader(
        self, batch_size: int, device: torch.device, rank: int = 0, world: int = 1, workers: int = 0
    ) -> Loader:
        return Loader(
            self.dataset.val,
            self.transform(device, False),
            batch_size,
            device,
            False,
            0,
            rank,
            world,
            workers,
        )


def _limit(split, limit: int | None):
    """A fixed random subset (seed 0), so every method in a comparison sees the same samples."""
    if limit is None or limit >= len(split):
        return split
    index = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return split.subset(index)


def load_data(spec: DataSpec) -> DataBundle:
    """Read and prepare the dataset a recipe's ``data`` section describes."""
    dataset = read_source(spec.source)
    dataset.train = _limit(dataset.train, spec.train_limit)
    dataset.val = _limit(dataset.val, spec.val_limit)
    fmt = image_format(dataset, spec.image_size, spec.channels)
    augment = spec.augment
    if augment == "auto":
        augment = "crop_flip" if dataset.natural_images else "none"
    padding = spec.crop_padding if spec.crop_padding is not None else max(1, dataset.native_size // 8)
    crop = augment in ("crop", "crop_flip")
    if len(dataset.train) == 0 or len(dataset.val) == 0:
        raise UserError(f"Data source '{spec.source}' has an empty split; check the folder or the limits.")
    return DataBundle(dataset, fmt, padding if crop else 0, augment in ("flip", "crop_flip"))
