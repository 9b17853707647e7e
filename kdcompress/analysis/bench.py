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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from kdcompress.data import load_data
from kdcompress.deploy.onnx import export_onnx, onnx_latency, onnx_session
from kdcompress.deploy.trained import TrainedModel, data_for_model, load_trained
from kdcompress.errors import UserError, did_you_mean
from kdcompress.evaluate import evaluate
from kdcompress.formatting import ratio
from kdcompress.models import build_model
from kdcompress.models.cost import Latency, count_flops, count_parameters, safetensors_bytes, torch_latency
from kdcompress.recipe import DataSpec
from kdcompress.runtime import Runtime, resolve_device

DEFAULT_INPUT_SIZE = (3, 224, 224)
DEFAULT_BATCH_SIZES = (1, 8, 64)


# ---- models to measure --------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A model to measure: from a kdcompress run/export folder, or a bare architecture (random init)."""

    name: str  # what the user passed
    arch: str
    model: nn.Module
    input_size: tuple[int, int, int]
    num_classes: int
    trained: TrainedModel | None = None  # the folder's model, config and weights file

    @property
    def weights(self) -> Path | None:
        return self.trained.weights if self.trained else None


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or Path(spec).suffix == ".safetensors"


def resolve_models(
    specs: list[str], input_size: tuple[int, int, int] | None = None, num_classes: int | None = None
) -> list[BenchModel]:
    """Folders load with their weights; bare architecture names get the size and classes of the
    first folder given (or ``input_size`` / ``num_classes`` when set; else 3x224x224 and 1000)."""
    loaded: dict[int, BenchModel] = {}
    for i, spec in enumerate(specs):
        if Path(spec).exists():
            trained = load_trained(spec)
            loaded[i] = BenchModel(
                spec, trained.arch, trained.model, trained.input_size, trained.num_classes, trained
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
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and cfg.fixed_input_size and tuple(cfg.input_size[1:]) != tuple(size[1:]):
        return {"img_size": tuple(size[1:])}
    return {}


# ---- the benchmark -------------------------------------------------------------------------------------


@dataclass
class BenchSettings:
    """What to time and how: one object handed to every model's measurement."""

    devices: list[torch.device]
    batch_sizes: list[int]
    repeats: int = 20
    warmup: int = 5
    with_onnx: bool = False
    data: str | None = None
    val_limit: int | None = None
    opset: int = 18
    threads: int | None = None
    notes: list[str] = field(default_factory=list)  # things the reader should know (skipped devices)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def bench_devices(spec: str) -> list[torch.device]:
    """``auto`` -> the CPU, plus the GPU when there is one; ``cpu`` / ``cuda[:N]`` -> that device only."""
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
    """Top-1 (%) on the validation split of ``source``, as the model was evaluated in training."""
    if bm.trained is not None:
        data = data_for_model(bm.trained, source, val_limit=val_limit)
    else:
        channels, size, _ = bm.input_size
        data = load_data(DataSpec(source=source, image_size=size, channels=channels, val_limit=val_limit))
        if data.num_classes != bm.num_classes:
            raise UserError(
                f"'{bm.name}' predicts {bm.num_classes} classes but '{source}' has {data.num_classes}; "
                "benchmark accuracy on the dataset it was trained for."
            )
    model = bm.model.to(device)
    return evaluate(model, data.val_loader(256, device), Runtime(device), "fp32")["top1"]


def onnx_providers(device: torch.device) -> list | None:
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


def measure_model(bm: BenchModel, role: str, settings: BenchSettings, work_dir: Path) -> dict[str, Any]:
    """One entry of the ``models`` list of the bench JSON."""
    model = bm.model.eval().cpu()
    weights = bm.weights
    is_onnx = bm.trained is not None and bm.trained.is_onnx
    entry: dict[str, Any] = {
        "name": bm.name,
        "role": role,
        "arch": bm.arch,
        "source": "onnx file" if is_onnx else "folder" if bm.trained else "architecture (random init)",
        "input_size": list(bm.input_size),
        "num_classes": bm.num_classes,
        "params": model.parameter_count() if is_onnx else count_parameters(model),
        "flops": None if is_onnx else count_flops(model, bm.input_size),  # no FLOP counter for ONNX graphs
        "size_bytes": weights.stat().st_size if weights else safetensors_bytes(model),
        "onnx_size_bytes": weights.stat().st_size if is_onnx else None,
        "top1": None,
        "latency": [],
    }
    if is_onnx:  # the file itself is what ships: time it in onnxruntime only
        _time_onnx(entry, weights, bm, settings)
        if settings.data is not None:
            entry["top1"] = evaluate_top1(bm, settings.data, torch.device("cpu"), settings.val_limit)
        return entry
    session_path = None
    if settings.with_onnx:
        session_path = export_onnx(model, bm.input_size, work_dir / f"{role}.onnx", settings.opset)
        entry["onnx_size_bytes"] = session_path.stat().st_size
    warmup, repeats = settings.warmup, settings.repeats
    for device in settings.devices:
        model = model.to(device)
        for batch in settings.batch_sizes:
            inputs = torch.randn(batch, *bm.input_size, device=device)
            latency = torch_latency(model, inputs, warmup, repeats)
            entry["latency"].append(_latency_row("pytorch", device, batch, latency))
        if session_path is not None:
            providers = onnx_providers(device)
            if providers is None:
                settings.note(
                    f"onnxruntime has no CUDA provider here (install onnxruntime-gpu); skipped {device}."
                )
                continue
            _time_onnx(entry, session_path, bm, settings, device, providers)
    if settings.data is not None:
        entry["top1"] = evaluate_top1(bm, settings.data, settings.devices[-1], settings.val_limit)
    bm.model = model.cpu()
    return entry


def _time_onnx(
    entry: dict[str, Any],
    path: Path,
    bm: BenchModel,
    settings: BenchSettings,
    device: torch.device | None = None,
    providers: list | None = None,
) -> None:
    """onnxruntime latency rows of ``path`` at every batch size (CPU unless providers say otherwise)."""
    session = onnx_session(path, providers, settings.threads)
    for batch in settings.batch_sizes:
        inputs = torch.randn(batch, *bm.input_size)
        latency = onnx_latency(session, inputs, settings.warmup, settings.repeats)
        entry["latency"].append(_latency_row("onnxruntime", device or torch.device("cpu"), batch, latency))


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
                    "speedup": ratio(row["median_ms"], other["median_ms"]),
                }
            )
    top1_delta = None
    if teacher["top1"] is not None and student["top1"] is not None:
        top1_delta = student["top1"] - teacher["top1"]
    return {
        "params": ratio(teacher["params"], student["params"]),
        "flops": ratio(teacher["flops"], student["flops"]),
        "size": ratio(teacher["size_bytes"], student["size_bytes"]),
        "onnx_size": ratio(teacher["onnx_size_bytes"], student["onnx_size_bytes"]),
        "top1_delta": top1_delta,
        "speedup": speedups,
    }


def run_bench(
    specs: list[str],
    *,
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
    """Measure one model, a teacher and a student (with their ratios), or several models (each its own
    entry, e.g. the candidate files of a compare, benched on the target device), and return the bench
    JSON document.

        ``threads`` sets the CPU threads of PyTorch and onnxruntime for the measurement (default: their own
        defaults, usually one per core)."""
    if not specs:
        raise UserError("Pass one model, a teacher and a student, or several models to benchmark.")
    if repeats < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise UserError("Benchmark settings need --repeats >= 1 and positive --batch-sizes.")
    settings = BenchSettings(
        devices=bench_devices(device),
        batch_sizes=list(batch_sizes),
        repeats=repeats,
        warmup=max(1, min(5, repeats // 4)) if warmup is None else warmup,
        with_onnx=with_onnx,
        data=data,
        val_limit=val_limit,
        threads=threads,
    )
    models = resolve_models(specs, input_size, num_classes)
    roles = ["teacher", "student"] if len(models) == 2 else ["model"] * len(models)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="kdcompress-bench-") as tmp:
            entries = [
                measure_model(bm, role, settings, Path(tmp)) for bm, role in zip(models, roles, strict=True)
            ]
        machine = machine_info()
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "models": entries,
        "ratios": compare_models(entries[0], entries[1]) if len(entries) == 2 else {},
        "machine": machine,
        "settings": {
            "batch_sizes": settings.batch_sizes,
            "repeats": repeats,
            "warmup": settings.warmup,
            "devices": [d.type for d in settings.devices],
            "onnx": with_onnx,
            "data": data,
            "val_limit": val_limit,
            "threads": threads,
        },
        "notes": settings.notes,
    }
