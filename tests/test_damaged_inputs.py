"""Damaged or odd inputs end in one warning or one error sentence, never a traceback: truncated and
non-image files in image folders, macOS resource forks, empty class folders, damaged CIFAR pickles."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings

import numpy as np
import pytest
import torch

from kdcompress.cli import app
from kdcompress.data import load_data, read_source
from kdcompress.data.loader import usable_cpus
from kdcompress.errors import UserError
from kdcompress.recipe import DataSpec

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def write_images(folder, count: int, suffix: str = ".jpg") -> None:
    """``count`` plain 40x30 images of distinct colours, so a batch shows which file a sample came from."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 30), COLOURS[i]).save(folder / f"{i}{suffix}")


def truncate(path) -> None:
    """Keep the first half of a file, as an interrupted copy or download does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def damaged(tmp_path):
    """train/ with a truncated JPEG, a text file named .jpg and a macOS resource fork; val/ intact."""
    root = tmp_path / "images"
    for part in ("train", "val"):
        for cls in ("a", "b"):
            write_images(root / part / cls, 4)
    truncate(root / "train" / "a" / "3.jpg")
    (root / "train" / "b" / "notes.jpg").write_text("not an image\n")
    (root / "train" / "a" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble header
    return root


def train_args(root, out, *extra: str) -> list[str]:
    args = ["train", "--model", "cifar_resnet8", "--data", f"imagefolder:{root}", "--epochs", "1"]
    args += ["--out", str(out), "--device", "cpu", "--quiet", "--set", "data.image_size=16"]
    return [*args, "--set", "export.formats=[]", *extra]


def warning_lines(output: str) -> list[str]:
    """The warnings a command showed the user, one per line, without the "warning: " prefix."""
    return [line.removeprefix("warning: ") for line in output.splitlines() if line.startswith("warning: ")]


def only_one_cpu(monkeypatch) -> None:
    """Pretend the process may use one core: the default 4 decoder workers become 1, a real one."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)


def test_damaged_files_are_replaced_with_one_warning(runner, damaged, tmp_path, monkeypatch):
    only_one_cpu(monkeypatch)
    out = tmp_path / "run"
    # 9 training files (the resource fork is not one) in batches of 3: one epoch decodes every file.
    result = runner.invoke(app, train_args(damaged, out, "--batch-size", "3"))
    assert result.exit_code == 0, result.output
    messages = warning_lines(result.output)
    decoded = [m for m in messages if "could not be decoded" in m]
    assert len(decoded) == 1, messages
    assert decoded[0].startswith("2 image files could not be decoded")
    assert "3.jpg" in decoded[0] and "notes.jpg" in decoded[0] and "._0.jpg" not in decoded[0]
    assert not [m for m in messages if "worker processes" in m]  # torch's too-many-workers warning
    assert json.loads((out / "config.json").read_text())["num_classes"] == 2


def test_on_bad_image_error_names_the_file_and_leaves_no_run_folder(runner, damaged, tmp_path):
    out = tmp_path / "run"
    args = train_args(damaged, out, "--batch-size", "3", "--set", "data.on_bad_image=error")
    result = runner.invoke(app, [*args, "--set", "data.num_workers=0"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "cannot be decoded" in result.output
    assert "3.jpg" in result.output or "notes.jpg" in result.output
    assert "Traceback" not in result.output and not out.exists()


def test_a_stand_in_is_the_next_image_of_the_class_whatever_the_worker_count(tmp_path):
    root = tmp_path / "images"
    write_images(root / "train" / "a", 3, ".png")
    write_images(root / "train" / "b", 3, ".png")
    write_images(root / "val" / "a", 3, ".png")
    write_images(root / "val" / "b", 2, ".png")
    truncate(root / "val" / "a" / "2.png")  # the last of its class: the first one stands in
    truncate(root / "train" / "a" / "1.png")
    spec = DataSpec(source=f"imagefolder:{root}", image_size=16)
    cpu = torch.device("cpu")

    def val_images(workers: int) -> torch.Tensor:
        with pytest.warns(UserWarning, match="1 image file could not be decoded"):
            batches = list(load_data(spec).val_loader(5, cpu, workers=workers).batches())
        assert [b.images.shape for b in batches] == [(5, 3, 16, 16)]
        return batches[0].images

    images = val_images(0)
    assert torch.equal(images[2], images[0]) and not torch.equal(images[1], images[0])
    assert torch.equal(images, val_images(1))
    # Training: 6 files in batches of 2, each of full size, and the same crops from a worker process.
    data = load_data(spec)
    with pytest.warns(UserWarning, match="train/a/1.png"):
        first = [b.images for b in data.train_loader(2, cpu, seed=0).batches(1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file is named once: a second pass stays quiet
        again = [b.images for b in data.train_loader(2, cpu, seed=0, workers=1).batches(1)]
    assert [x.shape for x in first] == [(2, 3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))


def test_a_class_with_no_decodable_image_is_an_error(tmp_path):
    root = tmp_path / "images"
    for part in ("train", "val"):
        write_images(root / part / "a", 2)
        write_images(root / part / "b", 2)
    for i in range(2):
        (root / "val" / "b" / f"{i}.jpg").write_text("not an image\n")
    loader = load_data(DataSpec(source=f"imagefolder:{root}", image_size=16)).val_loader(
        4, torch.device("cpu")
    )
    with pytest.raises(UserError, match="no other image of its class decodes"):
        list(loader.batches())


def test_hidden_entries_are_never_classes_or_images(tmp_path):
    root = tmp_path / "images"
    for part in ("train", "val"):
        write_images(root / part / "a", 2)
        write_images(root / part / "b", 2)
    write_images(root / "train" / ".ipynb_checkpoints", 1)
    (root / "train" / "a" / ".hidden.png").write_bytes(b"")
    (root / "val" / "b" / "._1.jpg").write_bytes(b"\x00\x05\x16\x07")
    data = read_source(f"imagefolder:{root}")
    assert data.class_names == ["a", "b"]
    assert len(data.train) == 4 and len(data.val) == 4


def test_an_empty_training_class_is_left_out_with_a_warning(runner, tmp_path):
    root = tmp_path / "images"
    for part in ("train", "val"):
        write_images(root / part / "a", 2)
        write_images(root / part / "c", 2)
    (root / "train" / "b").mkdir()
    (root / "train" / "b" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07")  # holds no image either
    (root / "val" / "b").mkdir()  # empty in val/ as well: nothing asked of the model
    (root / "val" / "z").mkdir()  # only in val/, and empty: ignored
    out = tmp_path / "run"
    args = train_args(root, out, "--batch-size", "2", "--set", "data.num_workers=0")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert any(
        re.match(r"Class folder\(s\) b in .* left out of the class list \(2 classes", line)
        for line in warning_lines(result.output)
    ), result.output
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 2 and config["kdcompress"]["class_names"] == ["a", "c"]


@pytest.mark.parametrize(
    ("val_class", "message"),
    [("d", "is a class that train/ does not have"), ("b", "holds images but .* holds none")],
)
def test_validation_images_of_a_class_train_lacks_are_an_error(tmp_path, val_class, message):
    root = tmp_path / "images"
    for part in ("train", "val"):
        write_images(root / part / "a", 2)
    (root / "train" / "b").mkdir()
    write_images(root / "val" / val_class, 1)
    with pytest.raises(UserError, match=message), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the empty train/b warning
        read_source(f"imagefolder:{root}")


def test_decoder_workers_are_capped_at_the_usable_cores(tmp_path, monkeypatch):
    only_one_cpu(monkeypatch)
    assert usable_cpus() == 1
    root = tmp_path / "images"
    for part in ("train", "val"):
        write_images(root / part / "a", 2)
    data = load_data(DataSpec(source=f"imagefolder:{root}", image_size=16))
    loader = data.val_loader(2, torch.device("cpu"), workers=4)
    assert loader.num_workers == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when workers outnumber the cores
        assert len(list(loader.batches())) == 1


CIFAR = {
    "cifar10": ("cifar-10-batches-py", [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]),
    "cifar100": ("cifar-100-python", ["train", "test"]),
}


def write_cifar(parent, name: str, str_keys: bool = False):
    """A CIFAR folder in the python-pickle layout, 4 images per file, optionally re-written by Python 3
    (str keys instead of the original bytes keys)."""
    folder_name, files = CIFAR[name]
    folder = parent / folder_name
    folder.mkdir(parents=True)
    labels = "fine_labels" if name == "cifar100" else "labels"
    for i, file in enumerate(files):
        batch = {
            "batch_label": f"batch {i}",
            labels: [0, 1, 2, 3],
            "data": np.full((4, 3072), i, dtype=np.uint8),
            "filenames": [f"{j}.png" for j in range(4)],
        }
        if name == "cifar100":
            batch["coarse_labels"] = [0, 0, 1, 1]
        if not str_keys:
            batch = {key.encode(): value for key, value in batch.items()}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_pickles_rewritten_by_python3_are_read(tmp_path, name):
    folder = write_cifar(tmp_path, name, str_keys=True)
    data = read_source(f"{name}:{folder}")
    assert data.train.images.shape == ((20 if name == "cifar10" else 4), 3, 32, 32)
    assert data.val.labels.tolist() == [0, 1, 2, 3] and data.num_classes == (10 if name == "cifar10" else 100)


def damage_truncated(tmp_path) -> str:
    folder = write_cifar(tmp_path, "cifar100")
    truncate(folder / "train")
    return f"cifar100:{folder}"


def damage_empty(tmp_path) -> str:
    folder = write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").write_bytes(b"")
    return f"cifar10:{folder}"


def damage_not_a_pickle(tmp_path) -> str:
    folder = write_cifar(tmp_path, "cifar10")
    (folder / "test_batch").write_text("<html>rate limited</html>\n")
    return f"cifar10:{folder}"


def cifar10_as_cifar100(tmp_path) -> str:
    write_cifar(tmp_path, "cifar10")
    return f"cifar100:{tmp_path}"


def cifar100_as_cifar10(tmp_path) -> str:
    return f"cifar10:{write_cifar(tmp_path, 'cifar100')}"


def cifar10_files_named_as_cifar100(tmp_path) -> str:
    """CIFAR-10 batches under CIFAR-100 file names: the labels are under the other key."""
    folder = tmp_path / "cifar-100-python"
    source = write_cifar(tmp_path / "src", "cifar10")
    folder.mkdir()
    for file in ("train", "test"):
        (folder / file).write_bytes((source / "data_batch_1").read_bytes())
    return f"cifar100:{folder}"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_truncated, r"cifar100 file '.*train' is damaged or not a pickle"),
        (damage_empty, r"cifar10 file '.*data_batch_3' is empty"),
        (damage_not_a_pickle, r"cifar10 file '.*test_batch' is damaged or not a pickle"),
        (cifar10_as_cifar100, "holds cifar10, not cifar100; use the data source cifar10:"),
        (cifar100_as_cifar10, "holds cifar100, not cifar10; use the data source cifar100:"),
        (cifar10_files_named_as_cifar100, "holds cifar10 labels .'labels', not 'fine_labels'."),
    ],
)
def test_damaged_cifar_folders_are_one_sentence_and_write_nothing(runner, tmp_path, damage, message):
    source = damage(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--model", "cifar_resnet8", "--data", source, "--epochs", "1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--device", "cpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    with pytest.raises(UserError, match=message):
        read_source(source)
    assert not out.exists()


def test_damaged_files_of_both_splits_are_one_warning_per_run(runner, damaged, tmp_path, monkeypatch):
    """Training, the validation passes of every epoch and the teacher's measurement meet the same files:
    the user hears of them once, with the count per split."""
    only_one_cpu(monkeypatch)
    truncate(damaged / "val" / "b" / "2.jpg")
    result = runner.invoke(app, train_args(damaged, tmp_path / "run", "--batch-size", "3", "--epochs", "2"))
    assert result.exit_code == 0, result.output
    decoded = [m for m in warning_lines(result.output) if "could not be decoded" in m]
    assert len(decoded) == 1, decoded
    assert decoded[0].startswith("3 image files (2 in train, 1 in val) could not be decoded")


def test_a_batch_larger_than_the_training_set_is_said_once(runner, tmp_path):
    args = ["train", "--model", "cifar_resnet8", "--data", "digits", "--epochs", "2", "--device", "cpu"]
    args += ["--set", "data.train_limit=40", "--batch-size", "64", "--out", str(tmp_path / "run"), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = [m for m in warning_lines(result.output) if "larger than the" in m]
    assert said == [
        "train.batch_size 64 is larger than the 40 training images, so every epoch is a single batch of 40; "
        "lower train.batch_size for more steps per epoch."
    ]
