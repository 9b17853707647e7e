"""Batches on the training device, augmented there.

Small datasets (digits, Fashion-MNIST, CIFAR, synthetic) are copied to the device once as uint8 and
every batch is gathered, cropped, flipped, resized and normalised there: no DataLoader, no worker
processes, no host round trip per step. Image folders are decoded by DataLoader workers into uint8
tensors of a fixed size (``files.py``: centre crop, or the ImageNet random resized crop), copied with
pinned memory, and then go through the same device transform, so flips and normalisation have one code
path. The pixels stay model-agnostic up to the last step: each model's input is the same augmented
pixels normalised with that model's spec (``data/spec.py``), once per distinct spec. A file that fails
to decode is replaced or raised as the recipe says (``data.on_bad_image``), and reported here, in the
main process, with one warning per pass that finds new ones.

Augmentation parameters are drawn explicitly per sample (crop offset, flip), from a generator seeded by
(seed, epoch). Two consequences users rely on: a resumed run sees exactly the batches the uninterrupted
run would have seen, and a (sample, view) pair identifies the teacher's input exactly, which is what
makes teacher-output caching correct.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kdcompress.data.files import FileDecoding, FileImages
from kdcompress.data.sources import DamageLog, Dataset, FileSplit, Split, TensorSplit
from kdcompress.data.spec import GREY_WEIGHTS, InputSpec
from kdcompress.errors import UserError


@dataclass
class Batch:
    """One training or evaluation batch, already normalised, plus what produced it.

    ``images`` is what the model being trained or evaluated sees; ``teacher_images`` is the same pixels
    normalised with the teacher's spec (the very same tensor when both specs normalise alike)."""

    images: torch.Tensor  # float [B, C, S, S] on the device
    labels: torch.Tensor  # int64 [B] on the device
    indices: torch.Tensor  # int64 [B] sample indices into the split (on the device)
    views: torch.Tensor  # int64 [B] augmentation view id (0 = un-augmented)
    teacher_images: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.teacher_images is None:
            self.teacher_images = self.images


@dataclass(frozen=True)
class ImageFormat:
    """The pixel grid every model of a run sees: channels and square size (normalisation is per model,
    :class:`kdcompress.data.spec.InputSpec`)."""

    channels: int
    size: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as the model sees it."""
        return (self.channels, self.size, self.size)


def image_format(dataset: Dataset, image_size: int | None, channels: int | None) -> ImageFormat:
    """The model-side image format for a dataset under the recipe's size and channel choices."""
    return ImageFormat(channels or dataset.channels, image_size or dataset.native_size)


def dataset_spec(dataset: Dataset, channels: int) -> InputSpec:
    """The dataset's own statistics as a spec for ``channels``-channel images: the convention of a model
    trained here from scratch."""
    spec = InputSpec(tuple(dataset.mean), tuple(dataset.std), origin=f"the {dataset.name} statistics")
    return spec.for_channels(channels)


class DeviceTransform:
    """uint8 batch -> float batch in the model format (crop, flip, channels, size), normalised once per
    distinct spec: one tensor per entry of ``specs``, the same tensor for specs that normalise alike."""

    def __init__(
        self,
        in_channels: int,
        fmt: ImageFormat,
        crop_padding: int,
        flip: bool,
        device: torch.device,
        specs: Sequence[InputSpec],
        interpolation: str = "bilinear",
    ):
        if not specs:
            raise ValueError("a transform needs at least one input spec")
        self.in_channels = in_channels
        self.fmt = fmt
        self.crop_padding = crop_padding
        self.flip = flip
        self.interpolation = interpolation
        self.specs = tuple(specs)
        self._scales: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._slot: list[int] = []  # spec k -> index of the first spec that normalises like it
        shape = (1, fmt.channels, 1, 1)
        for k, spec in enumerate(self.specs):
            if spec.channels != fmt.channels:
                raise ValueError(f"a {spec.channels}-channel spec for {fmt.channels}-channel images")
            first = next(j for j in range(k + 1) if self.specs[j].normalisation_equals(spec))
            self._slot.append(first)
            mean = torch.tensor(spec.mean, device=device).view(shape) * 255.0
            std = torch.tensor(spec.std, device=device).view(shape) * 255.0
            self._scales.append((mean, std))
        self.grey = torch.tensor(GREY_WEIGHTS, device=device).view(1, 3, 1, 1)

    @property
    def num_views(self) -> int:
        """Distinct augmented views of one sample (crop offsets x flips)."""
        side = 2 * self.crop_padding + 1
        return side * side * (2 if self.flip else 1)

    def sample_views(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Random view ids for ``count`` samples; view 0 is never special-cased by callers."""
        return torch.randint(0, self.num_views, (count,), generator=generator)

    def identity_view(self) -> int:
        """The view id of the un-augmented image (centre crop, no flip)."""
        side = 2 * self.crop_padding + 1
        return (self.crop_padding * side + self.crop_padding) * (2 if self.flip else 1)

    def pixels(self, images: torch.Tensor, views: torch.Tensor | None = None) -> torch.Tensor:
        """The augmented, resized float pixels (0..255) every spec normalises."""
        x = images
        if views is not None and self.num_views > 1:
            x = self._augment(x, views)
        x = x.float()
        if self.fmt.channels != self.in_channels:
            x = x.expand(-1, 3, -1, -1) if self.fmt.channels == 3 else (x * self.grey).sum(1, keepdim=True)
        if x.shape[-1] != self.fmt.size or x.shape[-2] != self.fmt.size:
            shrink = x.shape[-1] > self.fmt.size and self.interpolation != "nearest"
            x = F.interpolate(
                x, size=(self.fmt.size, self.fmt.size), mode=self.interpolation, antialias=shrink
            )
            if self.interpolation == "bicubic":  # bicubic overshoots; real pixels stay in range
                x = x.clamp(0.0, 255.0)
        return x

    def __call__(self, images: torch.Tensor, views: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        x = self.pixels(images, views)
        out: list[torch.Tensor] = []
        for k, (mean, std) in enumerate(self._scales):
            out.append(out[self._slot[k]] if self._slot[k] < k else (x - mean) / std)
        return tuple(out)

    def _augment(self, x: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        flips = views % 2 if self.flip else torch.zeros_like(views)
        offsets = views // 2 if self.flip else views
        if self.crop_padding > 0:
            p = self.crop_padding
            side = 2 * p + 1
            oy, ox = offsets // side, offsets % side
            h, w = x.shape[-2:]
            padded = F.pad(x, (p, p, p, p))
            rows = oy[:, None] + torch.arange(h, device=x.device)
            cols = ox[:, None] + torch.arange(w, device=x.device)
            batch = torch.arange(x.shape[0], device=x.device)[:, None, None]
            x = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        if self.flip:
            x = torch.where(flips.bool()[:, None, None, None], x.flip(-1), x)
        return x.contiguous()


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (containers, taskset,
    batch schedulers), else the machine's count. torch measures the same way when it warns that a
    DataLoader has more workers than cores; more workers than that only compete for the same cores."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def epoch_seed(seed: int, epoch: int) -> int:
    """The one seed of (run seed, epoch): data order, augmentation views and the engine's torch RNG.

    Mixing with a large odd constant keeps epochs of nearby seeds from sharing streams.
    """
    return seed * 1_000_003 + epoch


class Loader:
    """Iterates one split in batches on ``device``; shards across DDP ranks; reproducible per epoch."""

    def __init__(
        self,
        split: Split,
        transform: DeviceTransform,
        *,
        batch_size: int,
        device: torch.device,
        train: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        decoding: FileDecoding | None = None,
        report_damage: bool = True,
    ):
        self.split = split
        self.transform = transform
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = min(num_workers, usable_cpus())
        self.decoding = decoding or FileDecoding()
        # A pass reports the damaged files it met at its end, unless its owner (a training run) reports
        # once for all its passes.
        self.report_damage = report_damage
        self.labels = split.labels.to(device)
        self.images = split.images.to(device) if isinstance(split, TensorSplit) else None

    def _order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's sample order and view ids for an epoch."""
        n = len(self.split)
        if self.train:
            gen = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=gen)
            views = self.transform.sample_views(n, gen)
        else:
            order, views = torch.arange(n), None
        if self.world_size > 1:
            per_rank = n // self.world_size if self.train else math.ceil(n / self.world_size)
            order = order[self.rank :: self.world_size][:per_rank]
        return order, (views[order] if views is not None else None)

    def __len__(self) -> int:
        n = len(self._order(0)[0])
        if self.train and n >= self.batch_size:
            return n // self.batch_size
        return math.ceil(n / self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[Batch]:
        order, views = self._order(epoch)
        steps = len(self)
        identity = self.transform.identity_view()
        if self.images is None:
            yield from self._file_batches(epoch, order, views, steps, identity)
            return
        order_dev = order.to(self.device, non_blocking=True)
        views_dev = views.to(self.device, non_blocking=True) if views is not None else None
        for step in range(steps):
            index = order_dev[step * self.batch_size : (step + 1) * self.batch_size]
            view = (
                views_dev[step * self.batch_size : (step + 1) * self.batch_size]
                if views_dev is not None
                else None
            )
            inputs = self.transform(self.images[index], view)
            view_ids = view if view is not None else torch.full_like(index, identity)
            yield Batch(inputs[0], self.labels[index], index, view_ids, inputs[-1])

    def _file_batches(
        self, epoch: int, order: torch.Tensor, views: torch.Tensor | None, steps: int, identity: int
    ) -> Iterator[Batch]:
        seed = epoch_seed(self.seed, epoch) if self.train else None
        split: FileSplit = self.split  # type: ignore[assignment]
        dataset = FileImages(split, self.transform.fmt.size, self.decoding, seed)
        subset = torch.utils.data.Subset(dataset, order[: steps * self.batch_size].tolist())
        loader = torch.utils.data.DataLoader(
            subset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        try:
            for step, (images, sources, reasons) in enumerate(loader):
                window = slice(step * self.batch_size, step * self.batch_size + images.shape[0])
                index = order[window]
                self._undecoded(split, index, sources, reasons)
                view = views[window] if views is not None else None
                images = images.to(self.device, non_blocking=True)
                view_dev = view.to(self.device, non_blocking=True) if view is not None else None
                index_dev = index.to(self.device, non_blocking=True)
                inputs = self.transform(images, view_dev)
                view_ids = view_dev if view_dev is not None else torch.full_like(index_dev, identity)
                yield Batch(inputs[0], self.labels[index_dev], index_dev, view_ids, inputs[-1])
        finally:  # also when the consumer stops early (one example batch) or a later step fails
            if self.report_damage:
                report_damage(split.damage)

    def _undecoded(
        self, split: FileSplit, index: torch.Tensor, sources: torch.Tensor, reasons: list[str]
    ) -> None:
        """Record the samples of a batch whose file did not decode; raise when nothing stood in for one
        (``on_bad_image=error``, or no file of its class decodes)."""
        for k in torch.nonzero(sources != index).flatten().tolist():
            i = int(index[k])
            if int(sources[k]) < 0:
                if self.decoding.on_bad_image == "error":
                    raise UserError(
                        f"'{split.paths[i]}' cannot be decoded ({reasons[k]}); fix or remove it, or set "
                        "data.on_bad_image=skip to let another image of its class stand in."
                    )
                raise UserError(
                    f"'{split.paths[i]}' cannot be decoded ({reasons[k]}) and no other image of its class "
                    "decodes to stand in for it; fix or remove the broken files."
                )
            split.damage.found.setdefault(split.paths[i], split.part)


def report_damage(damage: DamageLog, named: int = 3) -> None:
    """One warning for the undecodable files not reported yet: how many, in which split, the first
    ``named`` of them."""
    new = damage.unreported()
    if not new:
        return
    damage.reported.update(new)
    names = ", ".join(f"'{path}'" for path in new[:named])
    more = f" and {len(new) - named} more" if len(new) > named else ""
    parts = sorted({damage.found[p] for p in new if damage.found[p]})
    where = ""
    if len(parts) > 1:
        counts = ", ".join(f"{sum(damage.found[p] == part for p in new)} in {part}" for part in parts)
        where = f" ({counts})"
    files = "1 image file" if len(new) == 1 else f"{len(new)} image files"
    warnings.warn(
        f"{files}{where} could not be decoded, so another image of the same class stands in for each: "
        f"{names}{more} (set data.on_bad_image=error to stop on them instead).",
        stacklevel=2,
    )
