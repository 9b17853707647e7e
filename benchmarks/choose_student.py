"""Which student to ship on Fashion-MNIST: ``compare --students`` under an int8 deployment, a thin caller.

Teacher: ``cifar_resnet20`` of ``benchmarks/fashion_mnist.py`` (all 60,000 training images). Students:
timm models of several families and the CIFAR zoo's smallest ResNet, all from scratch, each trained
with ``ce`` (its own scratch baseline) and the strongest methods of the Fashion-MNIST comparison, on the
same fixed 5,000 training images, 10 epochs, under the base recipe that comparison found best
(AdamW + OneCycle, no augmentation), at 32x32 (timm's ImageNet models downsample 32x: at 28x28 their
last stages would run on 1x1 maps). Every student is exported to int8 ONNX and timed with onnxruntime
on this machine (batch 1, one thread) before training; every run is scored as its int8 file on the
5,000 test images.

Writes ``benchmarks/results/choose_student.json`` (the leaderboard plus ``front_ce_only`` and
``front_all``: the Pareto fronts without and with distillation) and ``benchmarks/results/frontier.png``.
Runs are reused, so re-running only does what is missing.

Usage: python benchmarks/choose_student.py [--out runs/ship] [--students A,B] [--methods ce,sd-kd,fitnet]
       [--seeds 0,1] [--deploy int8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdcompress.analysis.compare.leaderboard import pareto_front  # noqa: E402

STUDENTS = "mobilenetv3_small_050,mobilenetv3_small_100,ghostnet_050,resnet10t,cifar_resnet8"
BASE = ROOT / "benchmarks/fmnist_bases/adamw-onecycle-none.yaml"


def front(rows: list[dict]) -> list[str]:
    """``student/method`` of the rows on the Pareto front of deployed top-1 against latency."""
    placed = [r for r in rows if r.get("latency_ms") is not None and r.get("deployed_top1_mean") is not None]
    points = [(r["latency_ms"], r["deployed_top1_mean"]) for r in placed]
    return [f"{r['student']}/{r['method']}" for r, on in zip(placed, pareto_front(points), strict=True) if on]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ship"))
    parser.add_argument("--teacher", type=Path, default=Path("runs/fmnist/teacher"))
    parser.add_argument("--students", default=STUDENTS)
    parser.add_argument("--methods", default="ce,sd-kd,fitnet")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--deploy", default="int8")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/choose_student.json")
    args = parser.parse_args()
    command = [sys.executable, "-m", "kdcompress", "compare", "--teacher", "cifar_resnet20"]
    command += ["--teacher-weights", str(args.teacher), "--students", args.students]
    command += ["--data", "fashion-mnist"]
    command += ["--base-recipe", str(BASE), "--methods", args.methods, "--seeds", args.seeds]
    command += ["--deploy", args.deploy, "--set", "data.image_size=32", "--set", "method.warmup=2"]
    command += ["--out", str(args.out)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    board = json.loads((args.out / "leaderboard.json").read_text())
    board["front_ce_only"] = front([r for r in board["rows"] if r["method"] == "ce"])
    board["front_all"] = front(board["rows"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(board, indent=2) + "\n")
    shutil.copy(args.out / "frontier.png", args.json.with_name("frontier.png"))
    print((args.out / "leaderboard.md").read_text())
    print("front with ce only:", ", ".join(board["front_ce_only"]))
    print("front with distillation:", ", ".join(board["front_all"]))


if __name__ == "__main__":
    main()
