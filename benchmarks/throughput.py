"""Distillation overhead and throughput, measured in one process with the measurements interleaved.

For each teacher -> student pair it times, round-robin so machine noise hits every row alike:
- the student's train step alone (method ``ce``),
- the teacher's forward alone (what the method asks of the teacher, under the same autocast),
- the full distill step of each method (``Trainer.train_step``: teacher, losses, backward, update),
and reports, from each row's fastest round,
``overhead_ratio = step_ms / (student_step_ms + teacher_forward_ms)``: 1.00 means the
method costs nothing beyond the two forward/backward passes it cannot avoid. An end-to-end row runs
the real loop (device loader + augmentation + step) for ``kd`` to give sustained images/s, and a
``kd+cache`` row times the step when every teacher output is already cached.

Usage: python benchmarks/throughput.py [--device cpu|cuda|auto] [--json FILE] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from kdcompress import engine
from kdcompress.evaluate import autocast_for
from kdcompress.methods import Progress
from kdcompress.recipe import validate_recipe
from kdcompress.runtime import setup_runtime

PAIRS = {
    "resnet32x4->resnet8x4": dict(teacher="cifar_resnet32x4", student="cifar_resnet8x4", size=32, batch=64),
    "resnet50->resnet18@224": dict(teacher="resnet50", student="resnet18", size=224, batch=64),
}
METHODS = ["kd", "dkd", "sd-kd", "sd-dkd", "luminet"]


def make_trainer(pair: dict, method: str, device: str, batch: int, cache: bool = False) -> engine.Trainer:
    recipe = {
        "student": {"arch": pair["student"]},
        "data": {
            "source": "synthetic:100",
            "image_size": pair["size"],
            "train_limit": 4 * batch,
            "val_limit": 16,
        },
        "method": {"name": method},
        "train": {"device": device, "batch_size": batch, "epochs": 1, "teacher_cache": cache},
    }
    if method != "ce":
        recipe["teacher"] = {"arch": pair["teacher"]}
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


def bench_pair(name: str, pair: dict, device: str, rounds: int, iters: int, batch: int) -> list[dict]:
    trainers = {"ce": make_trainer(pair, "ce", device, batch)}
    for method in METHODS:
        trainers[method] = make_trainer(pair, method, device, batch)
    trainers["kd+cache"] = make_trainer(pair, "kd", device, batch, cache=True)
    dev = trainers["ce"].runtime.device
    progress = Progress(epoch=30, step=0, steps_per_epoch=10)  # past every warm-up: full loss terms
    batches = {key: next(iter(t.train_loader.batches(1))) for key, t in trainers.items()}
    kd = trainers["kd"]

    def teacher_forward() -> None:
        with autocast_for(dev, kd.precision):
            kd.method.teacher_outputs(batches["kd"].images)

    calls: dict[str, Callable[[], object]] = {"teacher": teacher_forward}
    for key, trainer in trainers.items():
        calls[key] = lambda t=trainer, b=batches[key]: t.train_step(b, progress)

    def end_to_end() -> None:
        for step, b in enumerate(kd.train_loader.batches(2)):
            kd.train_step(b, Progress(2, step, len(kd.train_loader)))

    steps_per_loop = len(kd.train_loader)
    calls["kd end-to-end"] = end_to_end
    for call in calls.values():  # warm-up (and fills the teacher cache for kd+cache)
        call()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            samples[key].append(timed(call, dev, 1 if key == "kd end-to-end" else iters))
    # The fastest round: interference from other work on the machine only ever adds time, so the
    # minimum is the steadiest estimate of what each step costs (timeit's advice).
    ms = {key: min(values) for key, values in samples.items()}
    ms["kd end-to-end"] /= steps_per_loop
    student_ms, teacher_ms = ms["ce"], ms["teacher"]
    rows = []
    for key in [*METHODS, "kd+cache", "kd end-to-end"]:
        rows.append(
            {
                "pair": name,
                "method": key,
                "device": str(dev.type),
                "batch_size": batch,
                "step_ms": round(ms[key], 3),
                "images_per_second": round(batch / ms[key] * 1e3, 1),
                "student_step_ms": round(student_ms, 3),
                "teacher_forward_ms": round(teacher_ms, 3),
                "overhead_ratio": round(ms[key] / (student_ms + teacher_ms), 3),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| pair | method | device | batch | step ms | img/s | student ms | teacher ms | overhead |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['pair']} | {r['method']} | {r['device']} | {r['batch_size']} | {r['step_ms']:.1f} "
            f"| {r['images_per_second']:.0f} | {r['student_step_ms']:.1f} | {r['teacher_forward_ms']:.1f} "
            f"| {r['overhead_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/throughput.json"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="calls per timing sample")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated pair names")
    parser.add_argument("--cpu-batch-224", type=int, default=16, help="batch for 224px pairs on CPU")
    args = parser.parse_args()
    runtime = setup_runtime(args.device)
    rows = []
    for name in args.pairs.split(","):
        pair = PAIRS[name]
        batch = pair["batch"]
        if runtime.device.type == "cpu" and pair["size"] >= 224:
            batch = args.cpu_batch_224
        rows += bench_pair(name, pair, args.device, args.rounds, args.iters, batch)
    machine = {
        "device": torch.cuda.get_device_name()
        if runtime.device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"machine: {machine}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
