"""The first-run demo: the whole product on the embedded digits data, in a few minutes on a laptop CPU.

Teacher (cached between runs) -> the same student architecture trained from scratch and by KD ->
export of the distilled student to safetensors + ONNX (verified by onnxruntime) -> one table.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from kdcompress import checkpoint
from kdcompress.deploy.export import export
from kdcompress.deploy.onnx import onnx_latency, onnx_session
from kdcompress.deploy.trained import load_trained
from kdcompress.errors import UserError
from kdcompress.models.cost import torch_latency
from kdcompress.recipe import Recipe, validate_recipe
from kdcompress.train import engine

TEACHER_ARCH = "resnet18"
STUDENT_ARCH = "cifar_resnet8"
_DATA = {"source": "digits", "image_size": 32}  # resnet18 downsamples 32x: smaller would waste its last stage
_TRAIN = {"device": "cpu", "batch_size": 64, "seed": 0, "log_every": 10}
MARKER = ".kdcompress-demo"


@dataclass
class DemoRow:
    role: str
    arch: str
    params: int
    top1: float
    latency_ms: float
    onnx_latency_ms: float | None = None


def teacher_recipe(epochs: int) -> Recipe:
    return validate_recipe(
        {
            "student": {"arch": TEACHER_ARCH},
            "data": _DATA,
            "method": {"name": "ce"},
            "optim": {"lr": 0.05},
            "train": {**_TRAIN, "epochs": epochs},
        }
    )


def student_recipe(method: str, epochs: int, teacher_dir: Path | None) -> Recipe:
    data = {
        "student": {"arch": STUDENT_ARCH},
        "data": _DATA,
        "method": {"name": method},
        "optim": {"lr": 0.05},
        "train": {**_TRAIN, "epochs": epochs},
    }
    if teacher_dir is not None:
        data["teacher"] = {"arch": TEACHER_ARCH, "weights": str(teacher_dir)}
    return validate_recipe(data)


def cached_teacher(epochs: int, console: Console) -> Path:
    """Train the demo teacher once per recipe and keep it in the cache (a finished folder only)."""
    recipe = teacher_recipe(epochs)
    key = hashlib.sha256(recipe.to_yaml().encode()).hexdigest()[:12]
    folder = checkpoint.cache_root() / "demo" / f"teacher-{TEACHER_ARCH}-{key}"
    if (folder / checkpoint.STUDENT_FILE).is_file() and (folder / checkpoint.CONFIG_FILE).is_file():
        console.print(f"teacher: reusing {folder}")
        return folder
    console.print(f"teacher: training {TEACHER_ARCH} for {epochs} epochs (cached for next time)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".teacher-", dir=folder.parent)) / "run"
    try:
        engine.run(recipe, staging, console=console, quiet=True)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    return folder


def prepare_out_dir(out_dir: Path) -> None:
    """Reuse a previous demo folder (recognised by its marker); refuse to touch anything else."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).exists():
            raise UserError(f"'{out_dir}' exists and is not a kdcompress demo folder; pass another --out.")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    (out_dir / MARKER).write_text("created by `kdcompress demo`; safe to delete\n")


def run_demo(
    out_dir: Path, console: Console, teacher_epochs: int = 12, student_epochs: int = 15
) -> list[DemoRow]:
    prepare_out_dir(out_dir)
    teacher_dir = cached_teacher(teacher_epochs, console)
    console.print(f"student: {STUDENT_ARCH} from scratch ({student_epochs} epochs)")
    scratch = engine.run(
        student_recipe("ce", student_epochs, None), out_dir / "scratch", console=console, quiet=True
    )
    console.print(f"student: {STUDENT_ARCH} distilled with KD ({student_epochs} epochs)")
    distilled = engine.run(
        student_recipe("kd", student_epochs, teacher_dir), out_dir / "kd", console=console, quiet=True
    )
    console.print("export: safetensors + ONNX, checked with onnxruntime")
    exported = export(
        out_dir / "kd", ["safetensors", "onnx"], out_dir / "kd" / "export", data_source="digits"
    )

    teacher = load_trained(teacher_dir)
    student = load_trained(out_dir / "kd")
    one = torch.randn(1, *student.input_size)
    onnx_ms = onnx_latency(onnx_session(exported.files["onnx"]), one).median_ms
    rows = [
        DemoRow(
            "teacher",
            TEACHER_ARCH,
            distilled.teacher_params or 0,
            distilled.teacher_top1 or 0.0,
            torch_latency(teacher.model, one).median_ms,
        ),
        DemoRow(
            "student (scratch)",
            STUDENT_ARCH,
            scratch.student_params,
            scratch.best_top1,
            torch_latency(load_trained(out_dir / "scratch").model, one).median_ms,
        ),
        DemoRow(
            "student (KD)",
            STUDENT_ARCH,
            distilled.student_params,
            distilled.best_top1,
            torch_latency(student.model, one).median_ms,
            onnx_ms,
        ),
    ]
    return rows
