"""Image folders follow the ImageNet protocol: random resized crops for training, a crop_pct centre
crop for evaluation, reproducible per (seed, epoch, sample) whatever the worker count."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from kdcompress.cli import app
from kdcompress.data import load_data
from kdcompress.data.files import ResizedCrop
from kdcompress.data.spec import InputSpec
from kdcompress.errors import UserError
from kdcompress.recipe import DataSpec


def framed_image(width: int, height: int, frame: int):
    """Blue image with a red frame ``frame`` pixels wide: shows how much border a crop keeps."""
    from PIL import Image

    img = Image.new("RGB", (width, height), (255, 0, 0))
    img.paste((0, 0, 255), (frame, frame, width - frame, height - frame))
    return img


@pytest.fixture
def folder(tmp_path):
    """Two classes, three framed 64x48 images each, in train/ and val/."""
    for part in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / part / cls).mkdir(parents=True)
            for i in range(3):
                framed_image(64, 48, 4 + i).save(tmp_path / part / cls / f"{i}.png")
    return tmp_path


def red_share(images: torch.Tensor) -> float:
    """Fraction of pixels (of normalised images) that are red rather than blue."""
    return float((images[:, 0] > images[:, 2]).float().mean())


def test_resized_crop_boxes_respect_the_scale_and_ratio_ranges():
    crop = ResizedCrop(scale=(0.25, 0.5), ratio=(0.5, 2.0))
    rng = random.Random(0)
    for _ in range(200):
        left, top, right, bottom = crop.sample_box(300, 200, rng)
        w, h = right - left, bottom - top
        assert min(left, top) >= 0 and right <= 300 and bottom <= 200
        assert 0.25 * 0.97 <= w * h / 60000 <= 0.5 * 1.03  # rounding to whole pixels
        assert 0.5 * 0.95 <= w / h <= 2.0 * 1.05
    assert crop.sample_box(300, 200, random.Random(7)) == crop.sample_box(300, 200, random.Random(7))


def test_resized_crop_falls_back_to_the_largest_centred_crop_in_range():
    # A 1000x10 strip: no crop of 90-100 % of its area has an aspect ratio in [3/4, 4/3].
    crop = ResizedCrop(scale=(0.9, 1.0))
    assert crop.sample_box(1000, 10, random.Random(0)) == (493, 0, 506, 10)  # 13 = round(10 * 4/3)
    assert crop.sample_box(10, 1000, random.Random(0)) == (0, 493, 10, 506)  # 13 = round(10 / (3/4))


def test_image_folders_default_to_resized_crop_flip_and_a_0875_centre_crop(folder):
    data = load_data(DataSpec(source=f"imagefolder:{folder}", image_size=16, num_workers=0))
    assert data.decoding.resized_crop == ResizedCrop() and data.flip and data.crop_padding == 0
    assert data.decoding.crop_pct == 0.875 and not data.views_identify_inputs


def test_eval_centre_crop_follows_crop_pct(folder):
    def val_images(crop_pct: float) -> torch.Tensor:
        spec = DataSpec(source=f"imagefolder:{folder}", image_size=16, crop_pct=crop_pct, num_workers=0)
        return next(iter(load_data(spec).val_loader(6, torch.device("cpu")).batches())).images

    # Shorter side 48 -> 16 keeps a frame of 4/3..2 px; at crop_pct 0.5 the shorter side goes to 32 and
    # the centre 16x16 lies inside the blue, so no red is left.
    assert red_share(val_images(1.0)) > 0.1
    assert red_share(val_images(0.5)) == 0.0
    first, second = val_images(0.875), val_images(0.875)
    assert torch.equal(first, second)


def train_images(folder, epoch: int, workers: int, seed: int = 0) -> torch.Tensor:
    spec = DataSpec(
        source=f"imagefolder:{folder}", image_size=16, augment="resized_crop", num_workers=workers
    )
    loader = load_data(spec).train_loader(6, torch.device("cpu"), seed=seed, workers=workers)
    batch = next(iter(loader.batches(epoch)))
    return batch.images[batch.indices.argsort()]


def test_random_resized_crops_are_reproducible_per_epoch_and_worker_count(folder):
    epoch1 = train_images(folder, 1, workers=0)
    assert torch.equal(epoch1, train_images(folder, 1, workers=0))
    assert torch.equal(epoch1, train_images(folder, 1, workers=2))  # seeded by sample, not by worker
    assert not torch.equal(epoch1, train_images(folder, 2, workers=0))
    assert not torch.equal(epoch1, train_images(folder, 1, workers=0, seed=1))
    # Crops vary in how much of the frame they keep, unlike the fixed centre crop of evaluation.
    shares = {round(red_share(img[None]), 3) for img in epoch1}
    assert len(shares) > 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(source="digits", augment="resized_crop_flip"), "use crop_flip"),
        (dict(source="digits", crop_pct=0.875), "crop_pct sets the evaluation crop"),
    ],
)
def test_file_only_options_on_in_memory_data_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_data(DataSpec(**spec))


def test_bad_crop_ranges_are_rejected():
    with pytest.raises(ValueError, match="at most 1"):
        DataSpec(resized_crop_scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="low <= high"):
        DataSpec(resized_crop_ratio=(2.0, 1.0))


def test_training_on_an_image_folder_end_to_end(runner, folder, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "cifar_resnet8", "--data", f"imagefolder:{folder}", "--epochs", "1"]
    args += ["--batch-size", "4", "--out", str(out), "--quiet"]
    args += ["--set", "data.image_size=16", "--set", "data.num_workers=0", "--set", "export.formats=[]"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert math.isclose(config["pretrained_cfg"]["crop_pct"], 0.875)
    recipe = (out / "recipe.yaml").read_text()
    assert "augment: auto" in recipe or "augment: resized_crop_flip" in recipe


def test_teacher_cache_refuses_continuous_crops(runner, folder, tmp_path):
    out = tmp_path / "run"
    args = ["distill", "--teacher", "cifar_resnet8", "--student", "cifar_resnet8", "--method", "kd"]
    args += ["--data", f"imagefolder:{folder}", "--epochs", "1", "--batch-size", "4", "--out", str(out)]
    args += [
        "--set",
        "data.image_size=16",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.teacher_cache=true",
        "--set",
        "teacher.allow_random=true",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "turn train.teacher_cache off" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_eval_and_bench_use_the_crop_pct_the_model_was_trained_with(runner, folder, tmp_path, monkeypatch):
    """A student trained with data.crop_pct=1.0 is measured by `eval` and `bench` on 1.0 crops too."""
    out = tmp_path / "run"
    args = ["train", "--model", "cifar_resnet8", "--data", f"imagefolder:{folder}", "--epochs", "1"]
    args += ["--batch-size", "4", "--out", str(out), "--quiet", "--set", "data.image_size=16"]
    args += ["--set", "data.num_workers=0", "--set", "data.crop_pct=1.0"]
    assert runner.invoke(app, args).exit_code == 0
    import kdcompress.data.files as files

    used: list[float] = []
    original = files.centre_crop

    def recording_crop(img, size, crop_pct, *rest):
        used.append(crop_pct)
        return original(img, size, crop_pct, *rest)

    monkeypatch.setattr(files, "centre_crop", recording_crop)
    result = runner.invoke(app, ["eval", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert used and set(used) == {1.0}
    used.clear()
    bench = ["bench", str(out), "--data", f"imagefolder:{folder}", "--batch-sizes", "1", "--repeats", "1"]
    result = runner.invoke(app, [*bench, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert used and set(used) == {1.0}


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(53, 37), (37, 53), (40, 40)])
def test_evaluation_inputs_equal_timms_own_pipeline(tmp_path, interpolation, size):
    """A timm model's published accuracy holds under timm's evaluation transform (resize the shorter side
    to size / crop_pct, centre crop, normalise); the loader gives exactly those tensors."""
    from PIL import Image
    from timm.data import create_transform

    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=rng, dtype=torch.uint8)
    for part in ("train", "val"):
        (tmp_path / part / "a").mkdir(parents=True)
        Image.fromarray(pixels.numpy()).save(tmp_path / part / "a" / "0.png")
    spec = InputSpec((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation, 0.875)
    data = load_data(DataSpec(source=f"imagefolder:{tmp_path}", image_size=16, num_workers=0))
    data = data.with_spec(spec).with_resampling(spec.interpolation, spec.crop_pct)
    ours = next(iter(data.val_loader(1, torch.device("cpu")).batches())).images[0]
    timm_eval = create_transform(
        (3, 16, 16), crop_pct=0.875, interpolation=interpolation, mean=spec.mean, std=spec.std
    )
    theirs = timm_eval(Image.open(tmp_path / "val" / "a" / "0.png").convert("RGB"))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_the_run_resamples_like_the_teacher_unless_the_recipe_says_otherwise(folder):
    data = load_data(DataSpec(source=f"imagefolder:{folder}", image_size=16, num_workers=0))
    teacher = InputSpec((0.5,) * 3, (0.5,) * 3, "bicubic", 0.95)
    student = InputSpec((0.4,) * 3, (0.2,) * 3, "bilinear", 0.8)
    chosen = data.resampled_for(DataSpec(source="x"), [teacher, student]).decoding
    assert (chosen.interpolation, chosen.crop_pct) == ("bicubic", 0.95)
    stated = DataSpec(source="x", interpolation="nearest", crop_pct=1.0)
    chosen = data.resampled_for(stated, [teacher, student]).decoding
    assert (chosen.interpolation, chosen.crop_pct) == ("nearest", 1.0)
    assert data.resampled_for(DataSpec(source="x"), []).decoding == data.decoding  # the defaults
