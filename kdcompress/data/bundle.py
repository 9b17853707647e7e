"""A dataset as a recipe asks for it: read, limited, in the model's image format, ready to batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kdcompress.data.files import FileDecoding, ResizedCrop
from kdcompress.data.loader import DeviceTransform, ImageFormat, Loader, image_format
from kdcompress.data.sources import Dataset, FileSplit, Split, read_source
from kdcompress.errors import UserError
from kdcompress.recipe import DataSpec


@dataclass
class DataBundle:
    """A dataset as a recipe asks for it: limited, in the model's image format, ready to batch."""

    dataset: Dataset
    fmt: ImageFormat
    crop_padding: int
    flip: bool
    decoding: FileDecoding = FileDecoding()

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def views_identify_inputs(self) -> bool:
        """Whether (sample, view id) pins down a training input exactly, as the teacher cache needs.

        True for pad-crop and flip (finitely many views); false for the random resized crop, whose
        crops are continuous and drawn in the decoder, outside the view id.
        """
        return self.decoding.resized_crop is None

    def transform(self, device: torch.device, train: bool) -> DeviceTransform:
        padding, flip = (self.crop_padding, self.flip) if train else (0, False)
        return DeviceTransform(self.dataset.channels, self.fmt, padding, flip, device)

    def train_loader(
        self,
        batch_size: int,
        device: torch.device,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ) -> Loader:
        return Loader(
            self.dataset.train,
            self.transform(device, True),
            batch_size=batch_size,
            device=device,
            train=True,
            seed=seed,
            rank=rank,
            world_size=world,
            num_workers=workers,
            decoding=self.decoding,
        )

    def val_loader(
        self, batch_size: int, device: torch.device, *, rank: int = 0, world: int = 1, workers: int = 0
    ) -> Loader:
        return self.eval_loader(self.dataset.val, batch_size, device, rank=rank, world=world, workers=workers)

    def eval_loader(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ) -> Loader:
        """Un-augmented batches of any split (evaluation, probing, calibration) as evaluation sees them."""
        return Loader(
            split,
            self.transform(device, False),
            batch_size=batch_size,
            device=device,
            train=False,
            rank=rank,
            world_size=world,
            num_workers=workers,
            decoding=self.decoding,
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
    if len(dataset.train) == 0 or len(dataset.val) == 0:
        raise UserError(f"Data source '{spec.source}' has an empty split; check the folder or the limits.")
    fmt = image_format(dataset, spec.image_size, spec.channels)
    files = isinstance(dataset.train, FileSplit)
    augment = spec.augment
    if augment == "auto":
        natural = "resized_crop_flip" if files else "crop_flip"
        augment = natural if dataset.natural_images else "none"
    resized = augment.startswith("resized_crop")
    if resized and not files:
        raise UserError(
            f"data.augment={augment} decodes crops from image files; '{dataset.name}' is held in memory, "
            "so use crop_flip (pad and crop) instead."
        )
    if spec.crop_pct is not None and not files:
        raise UserError(
            f"data.crop_pct sets the evaluation crop of image folders; '{dataset.name}' is not one."
        )
    decoding = FileDecoding(
        crop_pct=spec.crop_pct if spec.crop_pct is not None else (0.875 if files else 1.0),
        resized_crop=ResizedCrop(spec.resized_crop_scale, spec.resized_crop_ratio) if resized else None,
        on_bad_image=spec.on_bad_image,
    )
    padding = spec.crop_padding if spec.crop_padding is not None else max(1, dataset.native_size // 8)
    crop = augment in ("crop", "crop_flip")
    return DataBundle(dataset, fmt, padding if crop else 0, augment.endswith("flip"), decoding)
