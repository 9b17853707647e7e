"""Dataset readers on tiny files in the real formats, and the device-side loader's augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from kdcompress.data import load_data, read_source
from kdcompress.data.loader import DeviceTransform, ImageFormat
from kdcompress.data.spec import InputSpec
from kdcompress.errors import UserError
from kdcompress.recipe import DataSpec


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_digits_split_is_fixed_and_stratified():
    a, b = read_source("digits"), read_source("digits")
    assert a.train.images.shape == (1438, 1, 8, 8) and len(a.val) == 359
    assert torch.equal(a.val.labels, b.val.labels)
    assert torch.bincount(a.val.labels).min() >= 34
    assert a.train.images.dtype == torch.uint8 and a.train.images.max() == 255


def test_fashion_mnist_idx_reader(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data = read_source(f"fashion-mnist:{tmp_path}")
    assert data.train.images.shape == (12, 1, 28, 28) and data.val.labels.tolist() == [0, 1, 2, 3, 4]
    assert data.num_classes == 10 and data.channels == 1


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        read_source(f"fashion-mnist:{tmp_path / 'nowhere'}")


def write_cifar(folder, fine: bool) -> None:
    folder.mkdir()
    key = b"fine_labels" if fine else b"labels"
    files = ["train", "test"] if fine else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for i, name in enumerate(files):
        batch = {b"data": np.full((4, 3072), i, dtype=np.uint8), key: [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(batch))


@pytest.mark.parametrize("fine", [False, True])
def test_cifar_pickle_reader(tmp_path, fine):
    name = "cifar-100-python" if fine else "cifar-10-batches-py"
    write_cifar(tmp_path / name, fine)
    data = read_source(f"{'cifar100' if fine else 'cifar10'}:{tmp_path}")  # the parent folder works too
    assert data.train.images.shape == ((4 if fine else 20), 3, 32, 32)
    assert data.num_classes == (100 if fine else 10)
    assert data.val.labels.tolist() == [0, 1, 2, 3]


def test_imagefolder_reader_and_loader(tmp_path):
    from PIL import Image

    for part in ("train", "val"):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            folder = tmp_path / part / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40 + i, 30), colour).save(folder / f"{i}.png")
    bundle = load_data(DataSpec(source=f"imagefolder:{tmp_path}", image_size=16, num_workers=0))
    assert bundle.dataset.class_names == ["cat", "dog"]
    batch = next(iter(bundle.val_loader(6, torch.device("cpu")).batches()))
    assert batch.images.shape == (6, 3, 16, 16)
    red = batch.images[batch.labels == 0][:, 0].mean()
    blue = batch.images[batch.labels == 1][:, 0].mean()
    assert red > blue  # colours survive decode -> resize -> normalise


def test_unknown_source_suggests():
    with pytest.raises(UserError, match="Did you mean 'digits'"):
        read_source("digit")


def test_limits_and_synthetic():
    bundle = load_data(DataSpec(source="synthetic:5", train_limit=100, val_limit=20))
    assert len(bundle.dataset.train) == 100 and len(bundle.dataset.val) == 20 and bundle.num_classes == 5


def identity_transform(padding: int, flip: bool) -> DeviceTransform:
    raw = InputSpec((0.0,), (1.0 / 255.0,))  # normalisation that keeps raw pixel values
    return DeviceTransform(1, ImageFormat(1, 4), padding, flip, torch.device("cpu"), [raw])


def test_identity_view_leaves_the_image_unchanged_and_views_crop_and_flip():
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    t = identity_transform(padding=1, flip=True)
    (same,) = t(image, torch.tensor([t.identity_view()]))
    assert torch.equal(same, image.float())
    # view ids: ((oy * 3 + ox) * 2 + flip); oy=ox=0 shifts the content down-right by one pixel.
    (shifted,) = t(image, torch.tensor([0]))
    assert torch.equal(shifted[0, 0, 1:, 1:], image[0, 0, :3, :3].float()) and shifted[0, 0, 0].sum() == 0
    (flipped,) = t(image, torch.tensor([t.identity_view() + 1]))
    assert torch.equal(flipped, image.float().flip(-1))
    assert t.num_views == 18


def test_loader_is_reproducible_per_epoch_and_shards_disjointly():
    bundle = load_data(DataSpec(source="synthetic", train_limit=64, val_limit=16))
    cpu = torch.device("cpu")
    a = [b.indices for b in bundle.train_loader(16, cpu, seed=3).batches(epoch=2)]
    b = [b.indices for b in bundle.train_loader(16, cpu, seed=3).batches(epoch=2)]
    c = [b.indices for b in bundle.train_loader(16, cpu, seed=3).batches(epoch=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    shards = [
        torch.cat([b.indices for b in bundle.train_loader(8, cpu, seed=3, rank=r, world=2).batches(1)])
        for r in (0, 1)
    ]
    assert len(set(shards[0].tolist()) & set(shards[1].tolist())) == 0
    assert len(shards[0]) + len(shards[1]) == 64
    val = [
        torch.cat([b.indices for b in bundle.val_loader(5, cpu, rank=r, world=2).batches()]) for r in (0, 1)
    ]
    assert sorted(torch.cat(val).tolist()) == list(range(16))  # evaluation sees every sample once


def test_grey_to_rgb_and_resize():
    bundle = load_data(DataSpec(source="digits", image_size=16, channels=3, val_limit=4))
    batch = next(iter(bundle.val_loader(4, torch.device("cpu")).batches()))
    assert batch.images.shape == (4, 3, 16, 16)
    assert torch.equal(batch.images[:, 0], batch.images[:, 2])
    assert bundle.spec.mean == (0.3053,) * 3
