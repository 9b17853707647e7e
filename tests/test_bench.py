"""``kdcompress bench``: the JSON schema, the side-by-side table, architecture-name mode, the helpers."""

from __future__ import annotations

import json

import pytest
import torch

from kdcompress.analysis.bench import _size_kwargs, resolve_models
from kdcompress.cli import app
from kdcompress.models.cost import Latency, count_flops, flop_counts, torch_latency

QUICK = ["--batch-sizes", "1,2", "--repeats", "2", "--device", "cpu"]
MODEL_KEYS = {
    "name",
    "role",
    "arch",
    "source",
    "input_size",
    "num_classes",
    "params",
    "flops",
    "size_bytes",
    "onnx_size_bytes",
    "top1",
    "latency",
}
LATENCY_KEYS = {"runtime", "device", "batch_size", "median_ms", "p90_ms", "images_per_second"}


def _check_latency(rows: list[dict], runtimes: set[str], batch_sizes: set[int]) -> None:
    expected = {(runtime, batch) for runtime in runtimes for batch in batch_sizes}
    assert {(r["runtime"], r["batch_size"]) for r in rows} == expected
    for row in rows:
        assert set(row) == LATENCY_KEYS and row["device"] == "cpu"
        assert 0 < row["median_ms"] <= row["p90_ms"]
        assert row["images_per_second"] == pytest.approx(row["batch_size"] * 1e3 / row["median_ms"])


def test_teacher_folder_vs_student_architecture_json_and_table(runner, teacher_run, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(teacher_run), "cifar_resnet8", "--data", "digits", "--json", str(out), *QUICK]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"models", "ratios", "machine", "settings"}
    teacher, student = report["models"]
    for entry in (teacher, student):
        assert set(entry) == MODEL_KEYS
        assert entry["params"] > 0 and entry["flops"] > 0 and entry["size_bytes"] > 0
        assert entry["onnx_size_bytes"] is None and 0 <= entry["top1"] <= 100
        _check_latency(entry["latency"], {"pytorch"}, {1, 2})
    assert teacher["role"] == "teacher" and teacher["source"] == "folder"
    assert teacher["arch"] == "cifar_resnet14"
    # the architecture name takes the folder's input format and classes
    assert student["source"].startswith("architecture") and student["input_size"] == [1, 8, 8]
    assert student["num_classes"] == 10
    ratios = report["ratios"]
    assert ratios["params"] == pytest.approx(teacher["params"] / student["params"])
    assert ratios["flops"] == pytest.approx(teacher["flops"] / student["flops"])
    assert ratios["top1_delta"] == pytest.approx(student["top1"] - teacher["top1"])
    assert {(s["runtime"], s["batch_size"]) for s in ratios["speedup"]} == {("pytorch", 1), ("pytorch", 2)}
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["torch"] == torch.__version__
    for text in ("cifar_resnet14", "cifar_resnet8", "teacher / student", "compression", "speed-up", "img/s"):
        assert text in result.output, text


def test_architecture_names_with_onnx(runner, tmp_path):
    out = tmp_path / "arch.json"
    args = ["bench", "cifar_resnet8", "--input-size", "3,16,16", "--num-classes", "5", "--onnx"]
    args += ["--json", str(out), "--batch-sizes", "1", "--repeats", "2", "--device", "cpu", "--threads", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    (entry,) = report["models"]
    assert entry["role"] == "model" and entry["input_size"] == [3, 16, 16] and entry["num_classes"] == 5
    assert entry["onnx_size_bytes"] > 0 and entry["top1"] is None
    _check_latency(entry["latency"], {"pytorch", "onnxruntime"}, {1})
    assert report["ratios"] == {} and report["settings"]["threads"] == 1
    assert "onnxruntime" in result.output and "teacher / student" not in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["resnet18q"], "neither a kdcompress run/export folder nor a timm architecture"),
        (["./no/such/folder"], "does not exist"),
        (["resnet18", "--batch-sizes", "1,x"], "--batch-sizes '1,x'"),
        (["resnet18", "--input-size", "3,32"], "--input-size '3,32'"),
    ],
)
def test_bad_arguments_exit_2(runner, args, needle):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and needle in result.output, result.output


def test_several_models_are_benched_side_by_side_without_ratios(runner, tmp_path):
    """Candidate files of a compare, benched together on the target device (compare --latency-json)."""
    out = tmp_path / "bench.json"
    args = ["bench", "cifar_resnet8", "cifar_resnet14", "cifar_resnet20", "--input-size", "3,16,16"]
    args += ["--num-classes", "10", "--batch-sizes", "1", "--repeats", "2", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [m["arch"] for m in report["models"]] == ["cifar_resnet8", "cifar_resnet14", "cifar_resnet20"]
    assert [m["role"] for m in report["models"]] == ["model"] * 3 and report["ratios"] == {}


def test_flops_and_latency_helpers():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    assert count_flops(model, (3, 2, 2)) == 2 * 12 * 5  # one multiply-add = 2 FLOPs
    assert set(flop_counts(model, (3, 2, 2))) == {"aten.addmm"}
    latency = torch_latency(model, torch.randn(4, 3, 2, 2), warmup=1, repeats=3)
    assert 0 < latency.median_ms <= latency.p90_ms
    stats = Latency.of([5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0])
    assert stats.median_ms == 6.0 and stats.p90_ms == 10.0


def test_fixed_size_architectures_take_the_input_size():
    assert _size_kwargs("vit_tiny_patch16_224", (3, 32, 32)) == {"img_size": (32, 32)}
    assert _size_kwargs("vit_tiny_patch16_224", (3, 224, 224)) == {}
    assert _size_kwargs("resnet18", (3, 32, 32)) == {}
    (bm,) = resolve_models(["cifar_resnet8"], input_size=(3, 16, 16), num_classes=3)
    assert bm.input_size == (3, 16, 16) and bm.num_classes == 3 and bm.trained is None
