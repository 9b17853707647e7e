"""Decoding image files into fixed-size uint8 tensors, in DataLoader workers.

This is the one place where file datasets (image folders) differ from in-memory ones. It follows the
ImageNet protocol the papers train and evaluate with, because a teacher's published accuracy only holds
under its own preprocessing:
- evaluation: resize the shorter side to ``size / crop_pct`` (256 for 224 at the usual 0.875), then
  take the centre ``size x size`` crop;
- training with ``resized_crop``: a random crop covering ``scale`` of the image area with an aspect
  ratio in ``ratio`` (log-uniform), resized to ``size x size`` straight from the full-resolution file.

The random crop of sample ``i`` in an epoch is drawn from a generator seeded by (epoch seed, ``i``), not
by worker, so a run is reproducible whatever ``num_workers`` is, and a resumed run decodes exactly the
crops the uninterrupted run would have. Flips stay on the device (the shared ``DeviceTransform``).

Damaged files (truncated, or not images at all) only show when their pixels are loaded, so they are
handled here, at decode time, and reported to the loader instead of raised (see ``FileImages``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from kdcompress.data.sources import FileSplit

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

_ATTEMPTS = 10  # tries at a crop that fits before falling back to a centre crop (the usual choice)


@dataclass(frozen=True)
class ResizedCrop:
    """Area-fraction and aspect-ratio ranges of the random resized crop."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def sample_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a random crop of a ``width x height`` image."""
        area = width * height
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(_ATTEMPTS):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_low, log_high))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                left = rng.randint(0, width - w)
                top = rng.randint(0, height - h)
                return left, top, left + w, top + h
        # No sampled crop fitted (extreme aspect ratios): the largest centred crop within the ratio range.
        aspect = min(max(width / height, self.ratio[0]), self.ratio[1])
        w, h = (width, round(width / aspect)) if width / height < aspect else (round(height * aspect), height)
        w, h = min(w, width), min(h, height)
        left, top = (width - w) // 2, (height - h) // 2
        return left, top, left + w, top + h


@dataclass(frozen=True)
class FileDecoding:
    """How a loader turns files into tensors: the eval centre-crop fraction, the resampling filter, the
    train-time crop, and what a file that fails to decode does (``data.on_bad_image``)."""

    crop_pct: float = 1.0
    resized_crop: ResizedCrop | None = None
    on_bad_image: Literal["skip", "error"] = "skip"
    interpolation: str = "bilinear"


class FileImages(torch.utils.data.Dataset):
    """One epoch's view of a file split: decoded, cropped and resized to ``size x size`` uint8."""

    def __init__(self, split: FileSplit, size: int, decoding: FileDecoding, epoch_seed: int | None):
        self.split = split
        self.size = size
        self.decoding = decoding
        # Only training loaders pass an epoch seed; evaluation is always the deterministic centre crop.
        self.epoch_seed = epoch_seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        """Sample ``i``'s pixels, the index of the file they were decoded from (-1: none), and why sample
        ``i``'s own file failed ("" when it did not).

        A failure is returned, not raised: raised in a DataLoader worker it would reach the user as a
        worker traceback, while the loader, in the main process, turns it into one warning or one
        UserError. With ``on_bad_image=skip`` the next file of the same class in the split (wrapping
        around) stands in, decoded with sample ``i``'s own crop. That replacement keeps the label true (a
        real image of the class, not a blank one that teaches the class looks black), keeps batch shapes
        and sample indices, and depends only on the file list and ``i``: runs stay reproducible whatever
        the worker count, and (sample, view) still names one input for the teacher cache.
        """
        from PIL import Image

        reason = ""
        for source in self._candidates(i):
            try:
                return self._decode(source, i), source, reason
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
                reason = reason or _describe(exc)
        return torch.zeros(3, self.size, self.size, dtype=torch.uint8), -1, reason

    def _candidates(self, i: int) -> Iterator[int]:
        """File ``i``, then (``skip`` only) the other files of its class, from the next one on."""
        yield i
        if self.decoding.on_bad_image == "skip":
            same = torch.nonzero(self.split.labels == self.split.labels[i]).flatten().tolist()
            k = same.index(i)
            yield from same[k + 1 :] + same[:k]

    def _decode(self, source: int, i: int) -> torch.Tensor:
        """File ``source`` as sample ``i`` (whose seed draws the crop): ``[3, size, size]`` uint8."""
        from PIL import Image

        with Image.open(self.split.paths[source]) as img:
            img = img.convert("RGB")
            crop = self.decoding.resized_crop
            if crop is not None and self.epoch_seed is not None:
                box = crop.sample_box(img.width, img.height, random.Random(f"{self.epoch_seed}:{i}"))
                out = img.resize((self.size, self.size), resampling(self.decoding.interpolation), box=box)
            else:
                out = centre_crop(img, self.size, self.decoding.crop_pct, self.decoding.interpolation)
            pixels = torch.frombuffer(bytearray(out.tobytes()), dtype=torch.uint8)
        return pixels.view(self.size, self.size, 3).permute(2, 0, 1).contiguous()


def _describe(exc: Exception) -> str:
    """Why a file did not decode, in words (PIL's own message repeats the path for non-images)."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can read"
    return str(exc) or type(exc).__name__


def resampling(interpolation: str) -> int:
    """PIL's filter for a timm ``interpolation`` name."""
    from PIL import Image

    filters = {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
    }
    return filters[interpolation]


def centre_crop(img: PILImage, size: int, crop_pct: float, interpolation: str = "bilinear") -> PILImage:
    """Shorter side to ``floor(size / crop_pct)``, then the centre ``size x size``.

    The sizes and offsets are computed exactly as timm's evaluation transform does (torchvision's
    ``Resize(int)``: the longer side truncated, ``CenterCrop``: offsets rounded), so a timm model fed
    through this loader sees the pixels timm's own pipeline would give it."""
    short = max(size, math.floor(size / crop_pct))
    width, height = img.size
    if width <= height:
        width, height = short, max(short, int(short * height / width))
    else:
        width, height = max(short, int(short * width / height)), short
    resized = img.resize((width, height), resampling(interpolation))
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return resized.crop((left, top, left + size, top + size))
