"""Every method against the from-scratch baseline on real data (Fashion-MNIST), one budget for all.

Reads the run list from ``benchmarks/fashion_mnist_methods.txt`` (recipe names) and
``benchmarks/fashion_mnist_feature_methods.txt`` (``name: distill arguments``), runs each through the
real CLI (``python -m kdcompress distill ...``) with the same budget overrides, and writes JSON rows
plus a markdown table. The teacher must exist first (``runs/fmnist/teacher``; see
``recipes/fashion-mnist/teacher.yaml``).

Seeds: ``--seeds 0,1,2`` repeats every run with ``train.seed`` set (data order, initialisation and
augmentation). Seed 0 is stored under the run's name and the others as ``name@seedK``, so more seeds
can be added to an existing JSON file later; the table reports the mean and standard deviation over
whatever seeds the file holds.

Usage: python benchmarks/fashion_mnist.py [--epochs N] [--train-limit N] [--val-limit N]
                                          [--only name,name] [--seeds 0,1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_runs() -> list[tuple[str, list[str]]]:
    runs = []
    for line in (ROOT / "benchmarks/fashion_mnist_methods.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name = line.strip()
            runs.append((name.split("/")[-1], ["--recipe", str(ROOT / "recipes" / f"{name}.yaml")]))
    for line in (ROOT / "benchmarks/fashion_mnist_feature_methods.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, args = line.partition(":")
            runs.append((name.strip(), shlex.split(args)))
    return runs


def best_row(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    best = max(rows, key=lambda r: r["val_top1"])
    config = json.loads((run_dir / "config.json").read_text())
    return {
        "best_val_top1": best["val_top1"],
        "best_epoch": best["epoch"],
        "last_val_top1": rows[-1]["val_top1"],
        "teacher_val_top1": config["kdcompress"].get("teacher_val_top1"),
        "images_per_second": sum(r["images_per_second"] for r in rows) / len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-limit", type=int, default=5000)
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/fmnist"))
    parser.add_argument("--only", default=None, help="comma-separated run names")
    parser.add_argument("--seeds", default="0", help="comma-separated train.seed values")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/fashion_mnist.json"))
    args = parser.parse_args()
    budget = ["--epochs", str(args.epochs), "--set", f"data.train_limit={args.train_limit}", "--quiet"]
    if args.val_limit:
        budget += ["--set", f"data.val_limit={args.val_limit}"]
    wanted = set(args.only.split(",")) if args.only else None
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for seed in (int(value) for value in args.seeds.split(",")):
        for name, run_args in read_runs():
            if wanted and name not in wanted:
                continue
            key = name if seed == 0 else f"{name}@seed{seed}"
            seeded = [*budget, "--set", f"train.seed={seed}"] if seed else budget
            results[key] = run_one(run_args, seeded, args.out / key)
            print(key, results[key], flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def run_one(run_args: list[str], budget: list[str], out: Path) -> dict:
    """One distill run through the CLI: its best/last accuracy, or the error it ended with."""
    command = [sys.executable, "-m", "kdcompress", "distill", *run_args, *budget, "--out", str(out)]
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stderr[-2000:], flush=True)
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    row = {**best_row(out), "seconds": round(time.perf_counter() - start, 1)}
    return row | {"command": "kdcompress " + shlex.join(command[3:])}


def markdown(results: dict[str, dict]) -> str:
    """Mean (and standard deviation over seeds, where there are several) per run name."""
    by_name: dict[str, list[dict]] = {}
    for key, row in results.items():
        by_name.setdefault(key.split("@")[0], []).append(row)

    def spread(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

    scratch = [r["best_val_top1"] for r in by_name.get("ce", []) if "error" not in r]
    lines = ["| run | seeds | best val top-1 | vs ce | last val top-1 |", "|---|---:|---:|---:|---:|"]
    for name, rows in by_name.items():
        good = [r for r in rows if "error" not in r]
        if not good:
            lines.append(f"| {name} | 0 | error: {rows[0]['error']} | | |")
            continue
        best = [r["best_val_top1"] for r in good]
        delta = f"{statistics.fmean(best) - statistics.fmean(scratch):+.2f}" if scratch else "n/a"
        last = spread([r["last_val_top1"] for r in good])
        lines.append(f"| {name} | {len(good)} | {spread(best)} | {delta} | {last} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
