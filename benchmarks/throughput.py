"""Distillation overhead and throughput, measured in one process with the measurements interleaved.

For each teacher -> student pair it times, in rounds, so machine noise hits every row alike:
- the student's train step alone (method ``ce``),
- the teacher's forward alone (what the method asks of the teacher, under the same autocast),
- the full distill step of each method (``Trainer.train_step``: teacher, losses, backward, update).

``overhead_ratio = step_ms / (student_step_ms + teacher_forward_ms)``: 1.00 means the method costs
nothing beyond the two passes it cannot avoid. Shared virtual machines drift by tens of percent over
seconds, so the ratio is computed within each round (where the three timings are seconds apart, in a
shuffled order) and the median over rounds is reported, with the interquartile range beside it. The
``step_ms`` columns are medians over rounds. An end-to-end row runs the real loop for ``kd``
(``Trainer.train_epoch``: device loader, augmentation, step, on-device sums, the periodic loss read) to
give sustained images/s, and a ``kd+cache`` row times the step when every teacher output is already
cached (the teacher cache on; the ``kd`` row is the same step with it off). A ``kd end-to-end, 2 specs``
row runs the same loop with a teacher whose input spec differs from the student's (each batch is
normalised twice, docs/data.md); its ``vs_one_spec`` is its per-round ratio to the one-spec loop.

The JSON file is rewritten after every pair, so a run cut short (``timeout``) keeps the pairs it finished.

Usage: python benchmarks/throughput.py [--device cpu|cuda|auto] [--json FILE] [--rounds N]
       [--threads N] [--compile] [--compile-mode default|reduce-overhead|max-autotune]
       [--pairs A,B] [--methods kd,dkd] [--batch N] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from kdcompress.evaluate import autocast_for
from kdcompress.methods import StepProgress
from kdcompress.recipe import validate_recipe
from kdcompress.runtime import setup_runtime
from kdcompress.train import engine
from kdcompress.train.display import RunDisplay

PAIRS = {
    "resnet32x4->resnet8x4": dict(teacher="cifar_resnet32x4", student="cifar_resnet8x4", size=32, batch=64),
    "resnet50->resnet18@224": dict(teacher="resnet50", student="resnet18", size=224, batch=64),
}
METHODS = ["kd", "dkd", "nkd", "sd-kd", "sd-dkd", "luminet"]
END_TO_END = "kd end-to-end"
END_TO_END_TWO_SPECS = "kd end-to-end, 2 specs"
#: A teacher convention unlike the synthetic data's statistics (0.5 / 0.3): two normalisations a batch.
OTHER_SPEC = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def make_trainer(
    pair: dict,
    method: str,
    device: str,
    batch: int,
    compile_mode: str | None,
    cache: bool = False,
    steps: int = 4,
    two_specs: bool = False,
) -> engine.Trainer:
    """A trainer on synthetic data of ``steps`` batches (random weights: only speed is measured)."""
    train = {"device": device, "batch_size": batch, "epochs": 1, "teacher_cache": cache}
    if compile_mode:
        train |= {"compile": True, "compile_mode": compile_mode}
    recipe = {
        "student": {"arch": pair["student"]},
        "data": {
            "source": "synthetic:100",
            "image_size": pair["size"],
            "train_limit": steps * batch,
            "val_limit": 16,
        },
        "method": {"name": method},
        "train": train,
    }
    if method != "ce":
        recipe["teacher"] = {"arch": pair["teacher"], "allow_random": True}  # speed only
        if two_specs:
            recipe["teacher"]["input"] = OTHER_SPEC
        recipe["data"]["augment"] = "none" if cache else "crop_flip"
    prepared = engine.prepare(validate_recipe(recipe))
    runtime = setup_runtime(device)
    return engine.Trainer(prepared, Path(tempfile.mkdtemp()), runtime, Console(quiet=True), quiet=True)


def timed(call: Callable[[], object], device: torch.device, iters: int) -> float:
    """Milliseconds per call over ``iters`` calls, GPU work included."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / iters


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25th, 50th, 75th) percentiles; with one value all three are that value."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure(
    calls: dict[str, Callable[[], object]], dev: torch.device, args: argparse.Namespace, steps: int
) -> dict[str, list[float]]:
    """Per-call milliseconds of every call in every round (per step for the end-to-end epoch)."""
    for _ in range(args.warmup):  # compile, autotune, allocator growth, and the teacher cache fill
        for call in calls.values():
            call()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(args.rounds):
        shuffle(order)
        for key in order:
            loop = key in (END_TO_END, END_TO_END_TWO_SPECS)
            per_call = timed(calls[key], dev, 1 if loop else args.iters)
            samples[key].append(per_call / steps if loop else per_call)
    return samples


def bench_pair(name: str, pair: dict, args: argparse.Namespace, batch: int) -> list[dict]:

    def make(method: str, cache: bool = False) -> engine.Trainer:
        return make_trainer(pair, method, args.device, batch, args.compile_mode, cache, args.steps)

    methods = args.methods.split(",")
    trainers = {"ce": make("ce")} | {method: make(method) for method in methods}
    trainers["kd+cache"] = make("kd", cache=True)
    two = make_trainer(pair, "kd", args.device, batch, args.compile_mode, False, args.steps, two_specs=True)
    dev = trainers["ce"].runtime.device
    progress = StepProgress(epoch=30, step=0, steps_per_epoch=10)  # past every warm-up: full loss terms
    batches = {key: next(iter(t.train_loader.batches(1))) for key, t in trainers.items()}
    kd = trainers["kd"]

    def teacher_forward() -> None:
        with autocast_for(dev, kd.precision):
            kd.method.teacher_outputs(batches["kd"].images)

    calls: dict[str, Callable[[], object]] = {"teacher": teacher_forward}
    for key, trainer in trainers.items():
        calls[key] = lambda t=trainer, b=batches[key]: t.train_step(b, progress)

    with RunDisplay(Console(quiet=True), 0, enabled=False) as display:
        calls[END_TO_END] = lambda: kd.train_epoch(2, display)
        calls[END_TO_END_TWO_SPECS] = lambda: two.train_epoch(2, display)
        samples = measure(calls, dev, args, steps=len(kd.train_loader))
    baseline = [s + t for s, t in zip(samples["ce"], samples["teacher"], strict=True)]
    rows = []
    for key in [*methods, "kd+cache", END_TO_END, END_TO_END_TWO_SPECS]:
        ratios = [step / base for step, base in zip(samples[key], baseline, strict=True)]
        low, ratio, high = quartiles(ratios)
        step_ms = statistics.median(samples[key])
        rows.append(
            {
                "pair": name,
                "method": key,
                "device": str(dev.type),
                "batch_size": batch,
                "step_ms": round(step_ms, 3),
                "images_per_second": round(batch / step_ms * 1e3, 1),
                "student_step_ms": round(statistics.median(samples["ce"]), 3),
                "teacher_forward_ms": round(statistics.median(samples["teacher"]), 3),
                "overhead_ratio": round(ratio, 3),
                "overhead_ratio_iqr": [round(low, 3), round(high, 3)],
                "rounds": args.rounds,
            }
        )
    spec_ratios = [t / o for t, o in zip(samples[END_TO_END_TWO_SPECS], samples[END_TO_END], strict=True)]
    low, ratio, high = quartiles(spec_ratios)
    rows[-1]["vs_one_spec"] = round(ratio, 3)
    rows[-1]["vs_one_spec_iqr"] = [round(low, 3), round(high, 3)]
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| pair | method | batch | step ms | img/s | student ms | teacher ms | overhead (IQR) |"
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        low, high = r["overhead_ratio_iqr"]
        lines.append(
            f"| {r['pair']} | {r['method']} | {r['batch_size']} | {r['step_ms']:.1f} "
            f"| {r['images_per_second']:.0f} | {r['student_step_ms']:.1f} | {r['teacher_forward_ms']:.1f} "
            f"| {r['overhead_ratio']:.3f} ({low:.2f}-{high:.2f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/throughput.json"))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iters", type=int, default=None, help="calls per timing (1 on CPU, 20 on GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (1 on CPU, 3 on GPU)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--compile-mode", default=None, help="compile student step and teacher in this mode")
    parser.add_argument("--compile", action="store_const", const="default", dest="compile_mode")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated pair names")
    parser.add_argument("--cpu-batch-224", type=int, default=16, help="batch for 224px pairs on CPU")
    parser.add_argument("--batch", type=int, default=None, help="batch for every pair (a quick run)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated; kd is always run")
    parser.add_argument("--steps", type=int, default=None, help="batches per epoch (16 on GPU, 4 on CPU)")
    args = parser.parse_args()
    if "kd" not in args.methods.split(","):
        args.methods = "kd," + args.methods  # the teacher forward and the end-to-end rows use kd's trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    runtime = setup_runtime(args.device)
    on_gpu = runtime.device.type == "cuda"
    args.iters = args.iters or (20 if on_gpu else 1)
    args.warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    args.steps = args.steps or (16 if on_gpu else 4)
    machine = {
        "device": torch.cuda.get_device_name() if on_gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "compile_mode": args.compile_mode,
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:]),
    }
    print(f"machine: {machine}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in args.pairs.split(","):
        pair = PAIRS[name]
        batch = args.batch or (args.cpu_batch_224 if not on_gpu and pair["size"] >= 224 else pair["batch"])
        pair_rows = bench_pair(name, pair, args, batch)
        rows += pair_rows
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
        print(markdown(pair_rows), flush=True)


if __name__ == "__main__":
    main()
