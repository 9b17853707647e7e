"""Size, FLOPs, latency and throughput of models: teacher vs student, PyTorch vs onnxruntime.

Latency is wall-clock time per call after a warm-up, reported as median and 90th percentile over
repeated calls; throughput is ``batch_size / median``. CUDA work is synchronised around each call.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass of one image
(one multiply-add = 2 FLOPs; operators it has no formula for, such as pooling, count as 0).

:func:`run_bench` returns the JSON document that ``kdcompress bench --json`` writes; its schema is in
``docs/deploy.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcompress.errors import UserError, did_you_mean

DEFAULT_INPUT_SIZE = (3, 224, 224)
DEFAULT_BATCH_SIZES = (1, 8, 64)


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Latency:
        ordered = sorted(samples_ms)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        return cls(statistics.median(ordered), p90)


def time_calls(
    call: Callable[[], object], warmup: int = 5, repeats: int = 30, sync_cuda: bool = False
) -> Latency:
    """Wall-clock latency of ``call``; CUDA work is synchronised so the GPU time is counted."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        if sync_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if sync_cuda:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return Latency.of(samples)


def torch_latency(
    model: torch.nn.Module, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30
) -> Latency:
    """Inference latency of a PyTorch model on ``inputs`` (eval mode, inference mode)."""
    model = model.eval()

    def call() -> None:
        with torch.inference_mode():
            model(inputs)

    return time_calls(call, warmup, repeats, sync_cuda=inputs.device.type == "cuda")


def onnx_latency(session, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30) -> Latency:
    """Inference latency of an onnxruntime session on ``inputs`` (host arrays in and out)."""
    feed = {session.get_inputs()[0].name: inputs.cpu().numpy()}
    return time_calls(lambda: session.run(None, feed), warmup, repeats)


# ---- static measurements ---------------------------------------------------------------------------


def flop_counts(
    model: nn.Module, input_size: tuple[int, int, int], device: torch.device | None = None
) -> dict[str, int]:
    """FLOPs of one forward pass of one image, per ATen operator (e.g. ``aten.convolution``)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Total forward FLOPs for one image."""
    return sum(flop_counts(model, input_size).values())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def safetensors_bytes(model: nn.Module) -> int:
    """Size of the model's state dict serialised as safetensors (what ``export`` would write)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(save(state))


# ---- models to measure --------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A model to measure: from a kdcompress run/export folder, or a bare architecture (random init)."""

    name: str  # what the user passed
    arch: str
    model: nn.Module
    input_size: tuple[int, int, int]
    num_classes: int
    weights: Path | None = None  # the safetensors file, for folders
    data_source: str | None = None  # the dataset a folder was trained on

    @property
    def from_folder(self) -> bool:
        return self.weights is not None


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or Path(spec).suffix == ".safetensors"


def resolve_models(
    specs: list[str], input_size: tuple[int, int, int] | None = None, num_classes: int | None = None
) -> list[BenchModel]:
    """Folders load with their weights; bare architecture names get the size and classes of the
    first folder given (or ``input_size`` / ``num_classes`` when set; else 3x224x224 and 1000)."""
    import timm

    from kdcompress.export import load_student
    from kdcompress.models import build_model

    loaded: dict[int, BenchModel] = {}
    for i, spec in enumerate(specs):
        if Path(spec).exists():
            student = load_student(spec)
            loaded[i] = BenchModel(
                spec,
                student.config["architecture"],
                student.model,
                student.input_size,
                int(student.config["num_classes"]),
                student.weights,
                student.data_source,
            )
        elif _looks_like_path(spec):
            raise UserError(
                f"'{spec}' does not exist; pass a kdcompress run/export folder or an architecture name."
            )
        elif not timm.is_model(spec):
            hint = did_you_mean(spec, timm.list_models())
            raise UserError(
                f"'{spec}' is neither a kdcompress run/export folder nor a timm architecture.{hint}"
            )
    first = next(iter(loaded.values()), None)
    size = input_size or (first.input_size if first else DEFAULT_INPUT_SIZE)
    classes = num_classes or (first.num_classes if first else 1000)
    models = []
    for i, spec in enumerate(specs):
        if i in loaded:
            models.append(loaded[i])
            continue
        model = build_model(spec, classes, size[0], **_size_kwargs(spec, size)).eval()
        models.append(BenchModel(spec, spec, model, tuple(size), classes))
    return models


def _size_kwargs(arch: str, size: tuple[int, int, int]) -> dict[str, Any]:
    """Models with a fixed input size (vision transformers) take the image size at build time."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.fixed_input_size and tuple(cfg.input_size[1:]) != tuple(size[1:]):
        return {"img_size": tuple(size[1:])}
    return {}


# ---- the benchmark -------------------------------------------------------------------------------------


def bench_devices(spec: str) -> list[torch.device]:
    """``auto`` -> the CPU, plus the GPU when there is one; ``cpu`` / ``cuda[:N]`` -> that device only."""
    from kdcompress.runtime import resolve_device

    if spec.strip().lower() == "auto":
        devices = [torch.device("cpu")]
        if torch.cuda.is_available():
            devices.append(torch.device("cuda", 0))
        return devices
    return [resolve_device(spec)]


def machine_info() -> dict[str, Any]:
    import onnxruntime

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda_device": cuda,
    }


def evaluate_top1(bm: BenchModel, source: str, device: torch.device, val_limit: int | None) -> float:
    """Top-1 (%) on the validation split of ``source``, in the model's own input format."""
    from kdcompress.data import load_data
    from kdcompress.evaluate import evaluate
    from kdcompress.recipe import DataSpec
    from kdcompress.runtime import Runtime

    channels, size, _ = bm.input_size
    data = load_data(DataSpec(source=source, image_size=size, channels=channels, val_limit=val_limit))
    if data.num_classes != bm.num_classes:
        raise UserError(
            f"'{bm.name}' predicts {bm.num_classes} classes but '{source}' has {data.num_classes}; "
            "benchmark accuracy on the dataset it was trained for."
        )
    model = bm.model.to(device)
    return evaluate(model, data.val_loader(256, device), Runtime(device), "fp32")["top1"]


def onnx_providers(device: torch.device) -> list[str] | None:
    """The onnxruntime providers for a device, or None when this onnxruntime cannot use it."""
    import onnxruntime

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return None


def _latency_row(runtime: str, device: torch.device, batch: int, latency: Latency) -> dict[str, Any]:
    return {
        "runtime": runtime,
        "device": device.type,
        "batch_size": batch,
        "median_ms": latency.median_ms,
        "p90_ms": latency.p90_ms,
        "images_per_second": batch / (latency.median_ms / 1e3) if latency.median_ms > 0 else None,
    }


def measure_model(
    bm: BenchModel,
    role: str,
    devices: list[torch.device],
    batch_sizes: list[int],
    repeats: int,
    warmup: int,
    with_onnx: bool,
    work_dir: Path,
    data: str | None,
    val_limit: int | None,
    notes: list[str],
    opset: int = 18,
    threads: int | None = None,
) -> dict[str, Any]:
    """One entry of the ``models`` list of the bench JSON."""
    model = bm.model.eval().cpu()
    entry: dict[str, Any] = {
        "name": bm.name,
        "role": role,
        "arch": bm.arch,
        "source": "folder" if bm.from_folder else "architecture (random init)",
        "input_size": list(bm.input_size),
        "num_classes": bm.num_classes,
        "params": count_parameters(model),
        "flops": count_flops(model, bm.input_size),
        "size_bytes": bm.weights.stat().st_size if bm.weights else safetensors_bytes(model),
        "onnx_size_bytes": None,
        "top1": None,
        "latency": [],
    }
    session_path = None
    if with_onnx:
        from kdcompress.export import export_onnx

        session_path = export_onnx(model, bm.input_size, work_dir / f"{role}.onnx", opset)
        entry["onnx_size_bytes"] = session_path.stat().st_size
    for device in devices:
        model = model.to(device)
        for batch in batch_sizes:
            inputs = torch.randn(batch, *bm.input_size, device=device)
            latency = torch_latency(model, inputs, warmup, repeats)
            entry["latency"].append(_latency_row("pytorch", device, batch, latency))
        if session_path is not None:
            providers = onnx_providers(device)
            if providers is None:
                note = f"onnxruntime has no CUDA provider here (install onnxruntime-gpu); skipped {device}."
                if note not in notes:
                    notes.append(note)
                continue
            session = _session(session_path, providers, threads)
            for batch in batch_sizes:
                inputs = torch.randn(batch, *bm.input_size)
                latency = onnx_latency(session, inputs, warmup, repeats)
                entry["latency"].append(_latency_row("onnxruntime", device, batch, latency))
    if data is not None:
        entry["top1"] = evaluate_top1(bm, data, devices[-1], val_limit)
    bm.model = model.cpu()
    return entry


def _session(path: Path, providers: list, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def compare_models(teacher: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    """Teacher / student ratios: compression (x fewer), speed-up (x faster), accuracy difference."""
    speedups = []
    student_rows = {(r["runtime"], r["device"], r["batch_size"]): r for r in student["latency"]}
    for row in teacher["latency"]:
        other = student_rows.get((row["runtime"], row["device"], row["batch_size"]))
        if other is not None:
            speedups.append(
                {
                    "runtime": row["runtime"],
                    "device": row["device"],
                    "batch_size": row["batch_size"],
                    "speedup": _ratio(row["median_ms"], other["median_ms"]),
                }
            )
    top1_delta = None
    if teacher["top1"] is not None and student["top1"] is not None:
        top1_delta = student["top1"] - teacher["top1"]
    return {
        "params": _ratio(teacher["params"], student["params"]),
        "flops": _ratio(teacher["flops"], student["flops"]),
        "size": _ratio(teacher["size_bytes"], student["size_bytes"]),
        "onnx_size": _ratio(teacher["onnx_size_bytes"], student["onnx_size_bytes"]),
        "top1_delta": top1_delta,
        "speedup": speedups,
    }


def run_bench(
    specs: list[str],
    data: str | None = None,
    batch_sizes: list[int] | tuple[int, ...] = DEFAULT_BATCH_SIZES,
    with_onnx: bool = False,
    device: str = "auto",
    repeats: int = 20,
    warmup: int | None = None,
    input_size: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    val_limit: int | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure one model, or a teacher and a student, and return the bench JSON document.

    ``threads`` sets the CPU threads of PyTorch and onnxruntime for the measurement (default: their own
    defaults, usually one per core)."""
    if not 1 <= len(specs) <= 2:
        raise UserError("Pass one model, or a teacher and a student, to benchmark.")
    if repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise UserError("Benchmark settings need --repeats >= 1 and positive --batch-sizes.")
    warmup = max(1, min(5, repeats // 4)) if warmup is None else warmup
    devices = bench_devices(device)
    models = resolve_models(specs, input_size, num_classes)
    roles = ["teacher", "student"] if len(models) == 2 else ["model"]
    notes: list[str] = []
    entries = []
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="kdcompress-bench-") as tmp:
            for bm, role in zip(models, roles, strict=True):
                entries.append(
                    measure_model(
                        bm,
                        role,
                        devices,
                        list(batch_sizes),
                        repeats,
                        warmup,
                        with_onnx,
                        Path(tmp),
                        data,
                        val_limit,
                        notes,
                        threads=threads,
                    )
                )
        machine = machine_info()
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "models": entries,
        "ratios": compare_models(entries[0], entries[1]) if len(entries) == 2 else {},
        "machine": machine,
        "settings": {
            "batch_sizes": list(batch_sizes),
            "repeats": repeats,
            "warmup": warmup,
            "devices": [d.type for d in devices],
            "onnx": with_onnx,
            "data": data,
            "val_limit": val_limit,
            "threads": threads,
        },
        "notes": notes,
    }
