"""A dataset as a recipe asks for it: read, limited, in the model's image format, ready to batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from kdcompress.data.files import FileDecoding, ResizedCrop
from kdcompress.data.loader import (
    DeviceTransform,
    ImageFormat,
    Loader,
    dataset_spec,
    image_format,
    report_damage,
)
from kdcompress.data.sources import Dataset, FileSplit, Split, read_source
from kdcompress.data.spec import InputSpec
from kdcompress.errors import UserError
from kdcompress.recipe import DataSpec


@dataclass
class DataBundle:
    """A dataset as a recipe asks for it: limited, in the model's image format, ready to batch.

    ``spec`` is the normalisation loaders use when not given others: the dataset's statistics until
    :meth:`for_model` sets the spec of the model at hand. ``decoding`` carries the shared resampling
    filter and, for image folders, the evaluation crop."""

    dataset: Dataset
    fmt: ImageFormat
    crop_padding: int
    flip: bool
    decoding: FileDecoding = FileDecoding()
    spec: InputSpec | None = None

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = dataset_spec(self.dataset, self.fmt.channels)

    @property
    def is_files(self) -> bool:
        """Image files decoded per batch (image folders), rather than pixels held in memory."""
        return isinstance(self.dataset.train, FileSplit)

    def with_spec(self, spec: InputSpec) -> DataBundle:
        """This data normalised for ``spec``'s model by default (its statistics, adapted to the data's
        channel count)."""
        return replace(self, spec=spec.for_channels(self.fmt.channels))

    def with_resampling(self, interpolation: str | None, crop_pct: float | None) -> DataBundle:
        """This data resampled with ``interpolation`` and, for image folders, evaluated on centre crops
        of ``crop_pct`` (None keeps the current value)."""
        decoding = self.decoding
        if interpolation is not None:
            decoding = replace(decoding, interpolation=interpolation)
        if crop_pct is not None and self.is_files:
            decoding = replace(decoding, crop_pct=crop_pct)
        return replace(self, decoding=decoding)

    def resampled_for(self, spec: DataSpec, models: Sequence[InputSpec]) -> DataBundle:
        """The shared resampling of a run: the recipe's ``data.interpolation`` / ``data.crop_pct`` when
        set, else those of the first model spec in ``models`` that names them (the teacher's first, so a
        pretrained teacher sees the crops it was evaluated on), else the defaults."""
        interpolation = spec.interpolation or next((m.interpolation for m in models if m.interpolation), None)
        crop = spec.crop_pct
        if crop is None:
            crop = next((m.crop_pct for m in models if m.crop_pct is not None), None)
        return self.with_resampling(interpolation, crop)

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

    def transform(
        self, device: torch.device, train: bool, specs: Sequence[InputSpec] | None = None
    ) -> DeviceTransform:
        padding, flip = (self.crop_padding, self.flip) if train else (0, False)
        return DeviceTransform(
            self.dataset.channels,
            self.fmt,
            padding,
            flip,
            device,
            specs or (self.spec,),
            self.decoding.interpolation,
        )

    def train_loader(
        self,
        batch_size: int,
        device: torch.device,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        specs: Sequence[InputSpec] | None = None,
        report_damage: bool = True,
    ) -> Loader:
        """Augmented training batches; with two ``specs`` (student, teacher) each batch carries both
        models' inputs. ``report_damage=False``: the caller reports undecodable files itself
        (:meth:`report_damage`), once for all its passes."""
        return Loader(
            self.dataset.train,
            self.transform(device, True, specs),
            batch_size=batch_size,
            device=device,
            train=True,
            seed=seed,
            rank=rank,
            world_size=world,
            num_workers=workers,
            decoding=self.decoding,
            report_damage=report_damage,
        )

    def val_loader(
        self,
        batch_size: int,
        device: torch.device,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        specs: Sequence[InputSpec] | None = None,
        report_damage: bool = True,
    ) -> Loader:
        return self.eval_loader(
            self.dataset.val,
            batch_size,
            device,
            rank=rank,
            world=world,
            workers=workers,
            specs=specs,
            report_damage=report_damage,
        )

    def eval_loader(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        specs: Sequence[InputSpec] | None = None,
        report_damage: bool = True,
    ) -> Loader:
        """Un-augmented batches of any split (evaluation, probing, calibration) as evaluation sees them."""
        return Loader(
            split,
            self.transform(device, False, specs),
            batch_size=batch_size,
            device=device,
            train=False,
            rank=rank,
            world_size=world,
            num_workers=workers,
            decoding=self.decoding,
            report_damage=report_damage,
        )

    def report_damage(self) -> None:
        """Warn once about the image files found undecodable since the last report (image folders)."""
        if isinstance(self.dataset.train, FileSplit):
            report_damage(self.dataset.train.damage)


#: The evaluation crop of image folders and the resampling filter when neither the recipe nor a model's
#: spec names one (the ImageNet protocol's 224-of-256 crop; bilinear as torchvision's default).
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bilinear"


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
        crop_pct=spec.crop_pct if spec.crop_pct is not None else (DEFAULT_CROP_PCT if files else 1.0),
        resized_crop=ResizedCrop(spec.resized_crop_scale, spec.resized_crop_ratio) if resized else None,
        on_bad_image=spec.on_bad_image,
        interpolation=spec.interpolation or DEFAULT_INTERPOLATION,
    )
    padding = spec.crop_padding if spec.crop_padding is not None else max(1, dataset.native_size // 8)
    crop = augment in ("crop", "crop_flip")
    return DataBundle(dataset, fmt, padding if crop else 0, augment.endswith("flip"), decoding)
