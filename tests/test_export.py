"""Deployment files: timm-only reloading, ONNX parity, fp16 / int8 drift checks, the export command.

One real ONNX export (the slow part, ~5 s) is made by the ``int8_export`` fixture through the CLI and
reused: the fp16 and dynamic-int8 checks convert that same fp32 file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import kdcompress.models  # noqa: F401  (registers the cifar_* zoo with timm)
from kdcompress import checkpoint
from kdcompress.cli import app
from kdcompress.deploy.export import ReducedOptions, export_reduced, export_safetensors
from kdcompress.deploy.onnx import onnx_session
from kdcompress.deploy.quantize import Comparison, choose_int8_mode, drift_warning
from kdcompress.deploy.trained import TrainedModel, data_for_model, load_trained


@pytest.fixture(scope="module")
def int8_export(teacher_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """``kdcompress export RUN --precision int8`` (static QDQ) into a fresh folder: (folder, output)."""
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("export") / "int8"
    args = ["export", str(teacher_run), "--out", str(out), "--precision", "int8", "--data", "digits"]
    args += ["--verify-images", "200", "--calibration-images", "64"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x)


# ---- safetensors + config.json, loaded by timm alone ----------------------------------------------------


def test_zoo_student_loads_with_timm_alone(int8_export, teacher_run):
    folder, _ = int8_export
    reference = load_trained(teacher_run)
    x = torch.randn(3, *reference.input_size, generator=torch.Generator().manual_seed(0))
    expected = _logits(reference.model, x)
    by_dir = timm.create_model(f"local-dir:{folder}", pretrained=True)
    config = json.loads((folder / "config.json").read_text())
    by_file = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
        num_classes=config["num_classes"],
        in_chans=config["model_args"]["in_chans"],
    )
    assert torch.equal(_logits(by_dir, x), expected)
    assert torch.equal(_logits(by_file, x), expected)
    data_cfg = timm.data.resolve_data_config({}, model=by_dir)
    assert tuple(data_cfg["input_size"]) == reference.input_size
    assert list(data_cfg["mean"]) == config["pretrained_cfg"]["mean"]


def test_timm_architecture_loads_with_timm_alone(tmp_path):
    model = timm.create_model("resnet18", num_classes=7, in_chans=1).eval()
    config = checkpoint.model_config(
        arch="resnet18", num_classes=7, in_chans=1, image_size=16, mean=(0.5,), std=(0.25,)
    )
    export_safetensors(TrainedModel(model, config, tmp_path / "unused"), tmp_path)
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = _logits(model, x)
    by_dir = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    # timm's own archs know 1000 ImageNet classes: the overlay states the file's classes and channels
    # (config.json's pretrained_cfg holds both), or timm would drop the classifier as "adapted".
    saved = json.loads((tmp_path / "config.json").read_text())
    by_file = timm.create_model(
        "resnet18",
        pretrained=True,
        pretrained_cfg_overlay=dict(saved["pretrained_cfg"], file=str(tmp_path / "model.safetensors")),
        num_classes=7,
        in_chans=1,
    )
    assert torch.equal(_logits(by_dir, x), expected)
    assert torch.equal(_logits(by_file, x), expected)


# ---- ONNX: fp32 parity, int8 and fp16 drift -----------------------------------------------------------


def test_fp32_onnx_matches_pytorch(int8_export, teacher_run):
    folder, output = int8_export
    assert "on real inputs: max |diff|" in output and "on random inputs: max |diff|" in output
    reference = load_trained(teacher_run)
    session = onnx_session(folder / "model.onnx")
    assert session.get_inputs()[0].shape[0] == "batch"
    x = torch.randn(5, *reference.input_size, generator=torch.Generator().manual_seed(2))
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.abs(got - _logits(reference.model, x).numpy()).max() < 1e-4


def test_int8_static_is_smaller_and_agrees(int8_export, teacher_run):
    folder, output = int8_export
    assert choose_int8_mode(load_trained(teacher_run).model, (1, 8, 8)) == "static"  # a conv net
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    assert int8.is_file() and int8.stat().st_size < 0.5 * fp32.stat().st_size
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    line = next(line for line in output.splitlines() if "top-1 agreement" in line)
    assert "int8 onnxruntime vs fp32 PyTorch on 200 validation images" in line
    agreement = float(line.split("top-1 agreement ")[1].split("%")[0])
    assert agreement >= 80.0, line
    assert "max |diff|" in line and "(fp32) ->" in line and "static QDQ" in output


def test_fp16_and_dynamic_int8_from_the_same_fp32_file(int8_export, teacher_run, tmp_path):
    folder, _ = int8_export
    shutil.copy(folder / "model.onnx", tmp_path / "model.onnx")
    student = load_trained(teacher_run)
    data = data_for_model(student, "digits", train_limit=64, val_limit=100)
    fp16 = export_reduced(tmp_path / "model.onnx", student, "fp16", data, ReducedOptions())
    assert fp16.path == tmp_path / "model.fp16.onnx" and fp16.path.is_file()
    session = onnx_session(fp16.path)
    assert session.get_inputs()[0].type == "tensor(float)"  # float32 in and out, fp16 inside
    c = fp16.comparison
    assert c.images == 100 and c.agreement >= 95.0 and 0 < c.max_abs_diff < 0.1
    assert c.reference_top1 is not None and abs(c.top1 - c.reference_top1) <= 5.0
    data = data_for_model(student, "digits", val_limit=50)
    dynamic = export_reduced(
        tmp_path / "model.onnx", student, "int8", data, ReducedOptions(int8_mode="dynamic")
    )
    assert "dynamic" in dynamic.method and dynamic.comparison.images == 50
    assert dynamic.to_dict()["agreement"] == dynamic.comparison.agreement


def test_drift_beyond_the_threshold_is_a_warning_with_numbers():
    close = Comparison(400, 99.5, 0.05, 0.01, 90.0, 89.75)
    assert drift_warning("int8", close, max_drop=1.0) is None
    far = Comparison(400, 97.0, 0.9, 0.1, 90.0, 87.5)
    warning = drift_warning("int8", far, max_drop=1.0)
    assert "97.00%" in warning and "90.00% to 87.50%" in warning and "400" in warning


# ---- the command's error paths -------------------------------------------------------------------------


def test_parity_failure_exits_2_with_one_sentence(runner, teacher_run, int8_export, tmp_path, monkeypatch):
    import kdcompress.deploy.export as export_module
    import kdcompress.deploy.onnx as onnx_module

    folder, _ = int8_export

    def fake_export(model, input_size, path, opset, metadata=None):  # the fixture's file: no second export
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "model.onnx", path)
        return path

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    monkeypatch.setattr(onnx_module, "logit_error", lambda session, model, x: 0.5)
    out = tmp_path / "bad"
    result = runner.invoke(app, ["export", str(teacher_run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.startswith("error:") and "differs from PyTorch by 5.00e-01" in message
    assert len(message.splitlines()) == 1
    assert not (out / "model.onnx").exists()  # an unverified file is not left behind


class _FakeSession:
    """What ``logit_error`` needs of an onnxruntime session: an input name and ``run``."""

    def __init__(self, output: np.ndarray) -> None:
        self.output = output

    def get_inputs(self):
        return [type("Input", (), {"name": "input"})()]

    def run(self, names, feed):
        return [self.output]


@pytest.mark.parametrize(
    ("scale", "drift", "accepted"),
    [(20.0, 1.3e-4, True), (20.0, 5e-3, False), (0.5, 1.3e-4, False), (0.5, 5e-5, True)],
)
def test_onnx_parity_bar_scales_with_the_logits(scale, drift, accepted):
    """Float32 reordering drift grows with the logits: 1.3e-4 on logits of 20 is rounding, on logits
    below 1 it is an error; 5e-3 on logits of 20 (2.5e-4 of their scale) is an error too."""
    from kdcompress.deploy.onnx import ONNX_TOLERANCE, logit_error

    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([scale, -scale / 2, 0.0]))
    expected = model(torch.zeros(2, 4)).detach().numpy()
    got = expected.copy()
    got[1, 0] += drift
    error = logit_error(_FakeSession(got), model, torch.zeros(2, 4))
    assert error == pytest.approx(drift / max(1.0, scale), rel=0.05)  # float32 spacing at 20: 2e-6
    assert (error <= ONNX_TOLERANCE) is accepted


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "safetensors", "--precision", "int8"], "applies to ONNX"),
        (["--precision", "int4"], "Unknown precision 'int4'"),
        (["--precision", "int8", "--int8-mode", "weird"], "Unknown int8 mode 'weird'"),
        (["--precision", "fp16", "--data", "synthetic:5"], "predicts 10 classes but 'synthetic:5' has 5"),
    ],
)
def test_bad_precision_options_exit_2(runner, teacher_run, tmp_path, args, needle):
    result = runner.invoke(app, ["export", str(teacher_run), "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and needle in result.output
    assert not (tmp_path / "x").exists()


def test_export_honours_the_opset_or_refuses(runner, teacher_run, tmp_path):
    from kdcompress.deploy.onnx import file_opset, max_opset

    out = tmp_path / "op13"
    result = runner.invoke(
        app, ["export", str(teacher_run), "--format", "onnx", "--opset", "13", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert file_opset(out / "model.onnx") == 13 and "on real inputs: max |diff|" in result.output
    result = runner.invoke(
        app, ["export", str(teacher_run), "--format", "onnx", "--opset", "30", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2 and f"from 11 to {max_opset()}" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x" / "model.onnx").exists()


def test_eval_and_bench_measure_the_onnx_files_that_ship(runner, int8_export):
    folder, _ = int8_export

    def top1(output: str) -> float:
        return float(output.split("│")[1])  # the first cell of the result row

    result = runner.invoke(app, ["eval", str(folder / "model.int8.onnx"), "--data", "digits"])
    assert result.exit_code == 0, result.output
    assert "model.int8.onnx, onnxruntime" in " ".join(result.output.split())
    fp32 = runner.invoke(app, ["eval", str(folder / "model.onnx"), "--data", "digits"])
    torch_run = runner.invoke(app, ["eval", str(folder), "--data", "digits"])
    assert fp32.exit_code == 0 and torch_run.exit_code == 0
    assert top1(fp32.output) == top1(torch_run.output)  # the fp32 file is the PyTorch model
    assert abs(top1(result.output) - top1(fp32.output)) < 10  # int8 drifts, but stays close
    bench = [
        "bench",
        str(folder / "model.int8.onnx"),
        "--data",
        "digits",
        "--batch-sizes",
        "1",
        "--repeats",
        "2",
    ]
    result = runner.invoke(app, [*bench, "--json", str(folder / "bench.json")])
    assert result.exit_code == 0, result.output
    entry = json.loads((folder / "bench.json").read_text())["models"][0]
    assert entry["source"] == "onnx file" and entry["top1"] is not None and entry["params"] > 0
    assert [row["runtime"] for row in entry["latency"]] == ["onnxruntime"]
    (folder / "broken.onnx").write_bytes(b"not onnx")
    broken = runner.invoke(app, ["eval", str(folder / "broken.onnx"), "--data", "digits"])
    assert broken.exit_code == 2 and "not an ONNX model onnxruntime can run" in broken.output


def test_export_on_torch_without_the_dynamo_exporter(runner, teacher_run, tmp_path, monkeypatch):
    """torch 2.4 and 2.5 (pyproject allows 2.4): the TorchScript exporter at opset 18 too, and no
    ``dynamo`` argument, which their ``torch.onnx.export`` would refuse."""
    from kdcompress.deploy import onnx as onnx_module

    newer_export = torch.onnx.export

    def old_export(*args, **kwargs):
        new_arguments = {"dynamo", "dynamic_shapes", "external_data"} & set(kwargs)
        if new_arguments:
            raise TypeError(f"export() got unexpected keyword arguments {sorted(new_arguments)}")
        return newer_export(*args, dynamo=False, **kwargs)  # what the old signature always ran

    monkeypatch.setattr(onnx_module, "HAS_DYNAMO_EXPORTER", False)
    monkeypatch.setattr(torch.onnx, "export", old_export)
    out = tmp_path / "old-torch"
    result = runner.invoke(app, ["export", str(teacher_run), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert onnx_module.file_opset(out / "model.onnx") == 18 and "on real inputs: max |diff|" in result.output
