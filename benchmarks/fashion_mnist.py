"""Every method on Fashion-MNIST against the strongest scratch baseline: a thin caller of `compare`.

1. The teacher: ``cifar_resnet20`` trained by ``recipes/fashion-mnist/teacher.yaml`` on all 60,000
   training images (on the students' 5,000 it stayed below the scratch student).
2. The base recipe: ``ce`` (student ``cifar_resnet8``, seed 0) under each candidate in
   ``benchmarks/fmnist_bases/`` (SGD + cosine + crop/flip; AdamW + OneCycle without and with
   crop/flip), all on the same 5,000 training images, 10 epochs, batch 64, 5,000 test images. The
   candidate with the best ``ce`` becomes the base recipe of every method: a gain only counts over the
   strongest baseline of the budget.
3. ``kdcompress compare --methods all --base-recipe BEST --seeds 0,1,2 --set method.warmup=2``: every
   method under that one recipe, 3 seeds. Warm-ups (20 epochs by default for DKD, SD-DKD, LumiNet;
   none for NKD and SD-KD) are 2 epochs for every ramped method of this 10-epoch budget, as in the
   shipped Fashion-MNIST recipes. The leaderboard is copied to
   ``benchmarks/results/fashion_mnist.json`` and printed as the README's table.

Runs are reused (compare's folders), so a re-run only does what is missing.

Usage: python benchmarks/fashion_mnist.py [--out runs/fmnist] [--seeds 0,1,2] [--methods all]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASES = sorted((ROOT / "benchmarks/fmnist_bases").glob("*.yaml"))


def kdcompress(*args: str) -> None:
    print("$ kdcompress", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "kdcompress", *args], check=True)


def compare(out: Path, teacher: Path, base: Path, methods: str, seeds: str, *extra: str) -> dict:
    kdcompress(
        "compare", "--teacher", "cifar_resnet20", "--teacher-weights", str(teacher),
        "--student", "cifar_resnet8", "--data", "fashion-mnist", "--base-recipe", str(base),
        "--methods", methods, "--seeds", seeds, "--out", str(out), *extra,
    )  # fmt: skip
    return json.loads((out / "leaderboard.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="all")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/fashion_mnist.json")
    args = parser.parse_args()
    teacher = args.out / "teacher"
    if not (teacher / "report.md").is_file():
        kdcompress("train", "--recipe", "fashion-mnist/teacher", "--out", str(teacher), "--quiet")
    sweep = {base.stem: compare(args.out / f"base-{base.stem}", teacher, base, "ce", "0") for base in BASES}
    scores = {name: board["rows"][0]["best_top1_mean"] for name, board in sweep.items()}
    best = max(scores, key=scores.get)
    print("ce under each candidate base recipe:", json.dumps(scores), "-> base recipe:", best, flush=True)
    out = args.out / f"compare-{best}"
    base = ROOT / "benchmarks/fmnist_bases" / f"{best}.yaml"
    compare(out, teacher, base, args.methods, args.seeds, "--set", "method.warmup=2")
    board = json.loads((out / "leaderboard.json").read_text())
    board["base_recipe_sweep"] = scores
    board["base_recipe"] = best
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(board, indent=2) + "\n")
    shutil.copy(out / "leaderboard.png", args.json.with_suffix(".png"))
    print((out / "leaderboard.md").read_text())


if __name__ == "__main__":
    main()
