"""Dataset readers, named by strings such as ``digits`` or ``cifar100:/data/cifar-100-python``.

Every reader returns uint8 images ``[N, C, H, W]`` (or, for image folders, a lazy file list) plus int64
labels, and declares its classes, channels, native size and normalisation. Keeping pixels as uint8 is
what lets whole datasets live on the training device cheaply (4x smaller than float32); conversion and
augmentation happen per batch, on the device.
"""

from __future__ import annotations

import gzip
import pickle
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdcompress.errors import UserError, did_you_mean

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


@dataclass
class TensorSplit:
    """A split held in memory as uint8 images and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> TensorSplit:
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class DamageLog:
    """Image files found undecodable during a run, shared by every split and subset of one dataset, so
    the user hears of each file once, however many loaders, passes and subsets meet it. Damage inside a
    file only shows when it is decoded: the loader records it, its owner reports it."""

    found: dict[Path, str] = field(default_factory=dict)  # path -> the split it is in ("train", "val")
    reported: set[Path] = field(default_factory=set)

    def unreported(self) -> list[Path]:
        return sorted(p for p in self.found if p not in self.reported)


@dataclass
class FileSplit:
    """A split of image files, decoded on demand (datasets too large to hold in memory)."""

    paths: list[Path]
    labels: torch.Tensor
    part: str = ""  # "train" or "val": named in warnings
    damage: DamageLog = field(default_factory=DamageLog, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> FileSplit:
        return FileSplit([self.paths[i] for i in index.tolist()], self.labels[index], self.part, self.damage)


Split = TensorSplit | FileSplit


@dataclass
class Dataset:
    """A named dataset with both splits and the facts models and exports need about it."""

    name: str
    num_classes: int
    channels: int
    native_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split
    natural_images: bool = True  # flips/crops are label-preserving (not for digits)
    class_names: list[str] = field(default_factory=list)


def _split_source(spec: str) -> tuple[str, str | None]:
    name, sep, arg = spec.partition(":")
    return name.strip().lower(), (arg.strip() or None) if sep else None


def _digits(arg: str | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    labels = bunch.target.astype(np.int64)
    # A fixed, stratified 80/20 split: the same on every machine, so demo numbers are comparable.
    rng = np.random.default_rng(0)
    train_idx, val_idx = [], []
    for cls in range(10):
        members = rng.permutation(np.flatnonzero(labels == cls))
        cut = int(round(0.8 * len(members)))
        train_idx.extend(members[:cut])
        val_idx.extend(members[cut:])
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    images = torch.from_numpy(pixels)
    targets = torch.from_numpy(labels)
    return Dataset(
        name="digits",
        num_classes=10,
        channels=1,
        native_size=8,
        mean=(0.3053,),
        std=(0.3759,),
        train=TensorSplit(images[train_idx], targets[train_idx]),
        val=TensorSplit(images[val_idx], targets[val_idx]),
        natural_images=False,
        class_names=[str(i) for i in range(10)],
    )


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise UserError(f"'{path}' is not an idx file of unsigned bytes; check the Fashion-MNIST folder.")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in '{root}'; install it with "
        "'apt-get install -y dataset-fashion-mnist' or pass fashion-mnist:DIR with the idx files."
    )


def _fashion_mnist(arg: str | None) -> Dataset:
    root = Path(arg) if arg else FASHION_MNIST_DIR
    if not root.is_dir():
        raise UserError(
            f"Fashion-MNIST folder '{root}' does not exist; install it with "
            "'apt-get install -y dataset-fashion-mnist' or pass fashion-mnist:DIR."
        )

    def split(prefix: str) -> TensorSplit:
        images = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        return TensorSplit(
            torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64))
        )

    names = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
    return Dataset(
        name="fashion-mnist",
        num_classes=10,
        channels=1,
        native_size=28,
        mean=(0.2860,),
        std=(0.3530,),
        train=split("train"),
        val=split("t10k"),
        class_names=names,
    )


_CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_CIFAR_FILES = {  # (train files, validation files)
    "cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
    "cifar100": (["train"], ["test"]),
}


def _cifar(arg: str | None, fine: bool) -> Dataset:
    name, other = ("cifar100", "cifar10") if fine else ("cifar10", "cifar100")
    if not arg:
        raise UserError(f"Data source '{name}' needs its folder: use {name}:DIR (the python-pickle version).")
    root = Path(arg)
    folder_name, other_folder = _CIFAR_FOLDERS[name], _CIFAR_FOLDERS[other]
    if not root.is_dir():
        raise UserError(f"{name} folder '{root}' does not exist; pass the '{folder_name}' folder.")
    if (root / folder_name).is_dir():
        root = root / folder_name
    first = _CIFAR_FILES[name][0][0]
    if not (root / first).is_file() and (
        (root / other_folder).is_dir() or (root / _CIFAR_FILES[other][0][0]).is_file()
    ):
        raise UserError(f"'{root}' holds {other}, not {name}; use the data source {other}:{arg}.")
    classes = 100 if fine else 10
    label_key, other_key = ("fine_labels", "labels") if fine else ("labels", "fine_labels")

    def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
        """One batch file as uint8 images [N, 3, 32, 32] and int64 labels.

        The original pickles (Python 2) have bytes keys; copies re-written by Python 3 have str keys:
        both are read.
        """
        if not path.is_file():
            raise UserError(f"{name} file '{path}' is missing; pass the '{folder_name}' folder.")
        if path.stat().st_size == 0:
            raise UserError(f"{name} file '{path}' is empty; download the '{folder_name}' folder again.")
        try:
            with path.open("rb") as handle:
                batch = pickle.load(handle, encoding="bytes")
        except Exception as exc:  # a truncated or foreign file can make the unpickler raise almost anything
            raise UserError(
                f"{name} file '{path}' is damaged or not a pickle ({type(exc).__name__}: {exc}); "
                f"download the '{folder_name}' folder again."
            ) from None
        if not isinstance(batch, dict):
            raise UserError(f"{name} file '{path}' is not a CIFAR batch; pass the '{folder_name}' folder.")
        entries = {key.decode("latin-1") if isinstance(key, bytes) else key: v for key, v in batch.items()}
        if label_key not in entries and other_key in entries:
            raise UserError(
                f"{name} file '{path}' holds {other} labels ('{other_key}', not '{label_key}'); "
                f"pass the '{folder_name}' folder."
            )
        if "data" not in entries or label_key not in entries:
            raise UserError(
                f"{name} file '{path}' lacks the 'data' or '{label_key}' entry; "
                f"pass the '{folder_name}' folder."
            )
        images, labels = np.asarray(entries["data"]), np.asarray(entries[label_key])
        if images.dtype != np.uint8 or images.shape[1:] != (3072,) or labels.shape != (len(images),):
            raise UserError(
                f"{name} file '{path}' does not hold 3072-byte images with one label each; "
                f"download the '{folder_name}' folder again."
            )
        if len(labels) and not 0 <= labels.min() <= labels.max() < classes:
            raise UserError(
                f"{name} file '{path}' has labels outside 0..{classes - 1}; pass the '{folder_name}' folder."
            )
        return images.reshape(-1, 3, 32, 32), labels.astype(np.int64)

    def load(files: list[str]) -> TensorSplit:
        images, labels = zip(*(read_batch(root / file) for file in files), strict=True)
        return TensorSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))

    train_files, val_files = _CIFAR_FILES[name]
    if fine:
        mean, std = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
    else:
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    return Dataset(name, classes, 3, 32, mean, std, load(train_files), load(val_files))


def _visible_children(folder: Path) -> list[Path]:
    """A folder's entries without dot-files: those are never data a user put there (macOS writes a
    ``._name.jpg`` resource fork beside every file it copies to a foreign disk, which PIL cannot read;
    ``.ipynb_checkpoints`` and ``.DS_Store`` are tools' bookkeeping)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder: Path) -> list[Path]:
    """A class folder's images, by file name only (opening 1.28M ImageNet files to check their headers
    would add a minute to every start; damaged files are handled when decoded, see ``FileImages``)."""
    return [p for p in _visible_children(folder) if p.suffix.lower() in IMAGE_SUFFIXES]


def _imagefolder(arg: str | None) -> Dataset:
    if not arg:
        raise UserError(
            "Data source 'imagefolder' needs its folder: use imagefolder:DIR with train/ and val/."
        )
    root = Path(arg)
    for part in ("train", "val"):
        if not (root / part).is_dir():
            raise UserError(
                f"Image folder '{root}' has no '{part}/' subfolder; lay it out as DIR/{part}/<class>/."
            )
    train = {cls.name: _image_files(cls) for cls in _visible_children(root / "train") if cls.is_dir()}
    classes = [name for name, files in train.items() if files]
    if not classes:
        raise UserError(
            f"'{root / 'train'}' has no class subfolders with images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
            "put images in train/<class>/."
        )
    empty = [name for name, files in train.items() if not files]
    if empty:
        # A class with no training images would be a class the model never learns to predict.
        warnings.warn(
            f"Class folder(s) {', '.join(empty)} in '{root / 'train'}' hold no images and are left out of "
            f"the class list ({len(classes)} classes remain).",
            stacklevel=2,
        )
    index = {name: i for i, name in enumerate(classes)}
    val: dict[str, list[Path]] = {}
    for cls in _visible_children(root / "val"):
        files = _image_files(cls) if cls.is_dir() else []
        if not files:
            continue  # an empty validation class asks nothing of the model
        if cls.name in train and cls.name not in index:
            raise UserError(
                f"'{cls}' holds images but '{root / 'train' / cls.name}' holds none, so the model cannot "
                "learn that class; add training images or remove the class from val/."
            )
        if cls.name not in index:
            raise UserError(f"'{cls}' is a class that train/ does not have; use the same class folders.")
        val[cls.name] = files
    if not val:
        raise UserError(f"'{root / 'val'}' holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")

    damage = DamageLog()

    def listing(files_by_class: dict[str, list[Path]], part: str) -> FileSplit:
        paths = [file for files in files_by_class.values() for file in files]
        labels = [index[name] for name, files in files_by_class.items() for _ in files]
        return FileSplit(paths, torch.tensor(labels, dtype=torch.int64), part, damage)

    return Dataset(
        name="imagefolder",
        num_classes=len(classes),
        channels=3,
        native_size=224,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        train=listing({name: train[name] for name in classes}, "train"),
        val=listing(val, "val"),
        class_names=classes,
    )


def _synthetic(arg: str | None) -> Dataset:
    """Class-conditional random images: each class is a smooth random prototype plus noise.

    Learnable but not trivial, so throughput benchmarks and tests exercise real training dynamics.
    """
    try:
        num_classes = int(arg) if arg else 10
    except ValueError:
        raise UserError(f"synthetic:{arg} is not a class count; use e.g. synthetic:100.") from None
    if num_classes < 2:
        raise UserError("synthetic needs at least 2 classes.")
    gen = torch.Generator().manual_seed(1234)
    size, channels = 32, 3
    coarse = torch.rand(num_classes, channels, 4, 4, generator=gen)
    prototypes = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)

    def make(count: int) -> TensorSplit:
        labels = torch.arange(count) % num_classes
        noise = 0.35 * torch.randn(count, channels, size, size, generator=gen)
        pixels = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return TensorSplit(pixels, labels)

    return Dataset(
        "synthetic", num_classes, channels, size, (0.5,) * 3, (0.3,) * 3, make(2048), make(512), True
    )


READERS: dict[str, Callable[[str | None], Dataset]] = {
    "digits": _digits,
    "fashion-mnist": _fashion_mnist,
    "cifar10": lambda arg: _cifar(arg, fine=False),
    "cifar100": lambda arg: _cifar(arg, fine=True),
    "imagefolder": _imagefolder,
    "synthetic": _synthetic,
}


def read_source(spec: str) -> Dataset:
    """Read the dataset a source string names (``name`` or ``name:ARG``)."""
    name, arg = _split_source(spec)
    reader = READERS.get(name)
    if reader is None:
        raise UserError(
            f"Unknown data source '{name}'; choose one of {', '.join(READERS)}.{did_you_mean(name, READERS)}"
        )
    return reader(arg)
