"""Logit-free feature KD in its paper's setting, against the paper's baselines, on Fashion-MNIST.

Teacher: the ImageNet-pretrained ``tf_efficientnet_lite0`` fine-tuned on Fashion-MNIST by
``benchmarks/pretrained_teacher.py`` (64x64 RGB). Student: timm ``mobilenetv2_050`` from scratch (the
paper uses MobileNetV2 among its students). Every method trains under ``benchmarks/featkd_base.yaml``,
the paper's protocol (AdamW wd 0.01, OneCycle, batch 128, no augmentation), on 10,000 training
images, evaluated on 5,000 test images; the best-epoch top-1, mean and std over 3 seeds.

1. Learning rate: the ``--sweep-methods`` (``ce`` and ``featkd-auto``, seed 0) at every ``--rates``
   value; the comparison runs at ``--lr`` (default: the rate at which ``ce`` is best).
2. The paper's comparison set at that rate with ``kdcompress compare``: ``ce`` (same optimizer),
   ``kd``, ``base-fkd`` ("Base FKD": stage ends, CE through the backbone, KD at T=4),
   ``featkd-stages`` ("Base FKD-LL"), ``featkd-auto`` ("Ours": Q-chosen layers, head detached),
   ``featkd-ce`` ("Ours + CE") and ``sd-dkd`` (the strongest logit method of the toolkit), over
   ``--seeds``; the ``--key-methods`` (ce and featkd-auto) over ``--key-seeds`` when a small CPU
   budget cannot give every method every seed.

Every gain (``gain_vs_ce``) is over the best ``ce`` of the budget: the highest ``ce`` mean at any rate
of the sweep or of the comparison, whose rate is ``best_ce_lr``. Writes
``benchmarks/results/featkd_pretrained.json``: a list of rows ``{"run", "seeds", "best_top1_mean",
"best_top1_std", "last_top1_mean", "gain_vs_ce", "lr", ...}`` (``featkd-ce`` is named ``ours-ce``),
and the sweep in ``featkd_pretrained_lr_sweep.json``. Runs are reused, so re-running only does what is
missing.

Usage: python benchmarks/featkd_pretrained.py [--out runs/featkd-pretrained] [--seeds 0,1,2]
       [--rates 0.002,0.005,0.01] [--sweep-methods ce,featkd-auto] [--lr R] [--methods ce,kd,...]
       [--key-methods ce,featkd-auto --key-seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEACHER = Path("runs/pretrained/teacher-finetuned")
METHODS = "ce,kd,base-fkd,featkd-stages,featkd-auto,featkd-ce,sd-dkd"
RATES = "0.002,0.005,0.01"
NAMES = {"featkd-ce": "ours-ce"}


def compare(out: Path, methods: str, seeds: str, lr: str, teacher: Path) -> dict:
    command = [sys.executable, "-m", "kdcompress", "compare", "--teacher", "tf_efficientnet_lite0"]
    command += ["--teacher-weights", str(teacher), "--student", "mobilenetv2_050", "--data", "fashion-mnist"]
    command += ["--base-recipe", str(ROOT / "benchmarks/featkd_base.yaml"), "--methods", methods]
    command += ["--seeds", seeds, "--set", f"optim.lr={lr}", "--out", str(out)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return json.loads((out / "leaderboard.json").read_text())


def top1(board: dict, method: str) -> float:
    return next(r["best_top1_mean"] for r in board["rows"] if r["method"] == method)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/featkd-pretrained"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--rates", default=RATES, help="sweep rates (fewer on a CPU)")
    parser.add_argument("--sweep-methods", default="ce,featkd-auto")
    parser.add_argument("--lr", default=None, help="the comparison's rate [default: ce's best]")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--key-methods", default="ce,featkd-auto")
    parser.add_argument("--key-seeds", default=None, help="[default: --seeds]")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/featkd_pretrained.json")
    args = parser.parse_args()
    rates = [lr.strip() for lr in args.rates.split(",") if lr.strip()]
    sweep = {lr: compare(args.out / f"lr{lr}", args.sweep_methods, "0", lr, args.teacher) for lr in rates}
    lr = args.lr or max(rates, key=lambda r: top1(sweep[r], "ce"))
    folder = args.out / f"lr{lr}"
    board = compare(folder, args.methods, args.seeds, lr, args.teacher)
    rows = {r["method"]: r for r in board["rows"]}
    if args.key_seeds and args.key_seeds != args.seeds:
        key = compare(folder, args.key_methods, args.key_seeds, lr, args.teacher)
        rows.update({r["method"]: r for r in key["rows"]})
    ce_by_rate = {r: top1(sweep[r], "ce") for r in rates} | {lr: rows["ce"]["best_top1_mean"]}
    best_ce_lr = max(ce_by_rate, key=ce_by_rate.get)
    results = []
    for method, row in rows.items():
        kept = {k: v for k, v in row.items() if k not in ("method", "gain_vs_best_ce", "gain_vs_own_ce")}
        gain = round(row["best_top1_mean"] - ce_by_rate[best_ce_lr], 2)
        extra = {"gain_vs_ce": gain, "lr": float(lr), "best_ce_lr": float(best_ce_lr)}
        results.append(
            {"run": NAMES.get(method, method), **kept, **extra, "teacher_top1": board["teacher"]["top1"]}
        )
    sweep_rows = [
        {"lr": float(r), **{m["method"]: m["best_top1_mean"] for m in sweep[r]["rows"]}} for r in rates
    ]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    args.json.with_name(args.json.stem + "_lr_sweep.json").write_text(json.dumps(sweep_rows, indent=2) + "\n")
    for row in results:
        spread = f"{row['best_top1_mean']:.2f} ± {row['best_top1_std']:.2f}"
        print(f"{row['run']:<14} seeds {row['seeds']}  {spread}  ({row['gain_vs_ce']:+.2f} vs best ce)")


if __name__ == "__main__":
    main()
