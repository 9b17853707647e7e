"""Every foundation command end to end on tiny digits runs, and the user-error contract (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from kdcompress.cli import app

TINY = [
    "--data",
    "digits",
    "--epochs",
    "1",
    "--set",
    "data.train_limit=256",
    "--set",
    "data.val_limit=128",
    "--quiet",
]


def test_train_writes_the_run_folder(runner, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--model", "cifar_resnet8", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "best val top-1" in result.output
    for name in ("recipe.yaml", "metrics.jsonl", "student.safetensors", "config.json", "report.md"):
        assert (out / name).is_file(), name
    assert (out / "last" / "student.safetensors").is_file() and (out / "last" / "state.pt").is_file()
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for key in (
        "epoch",
        "lr",
        "loss",
        "loss_ce",
        "train_top1",
        "val_top1",
        "epoch_seconds",
        "images_per_second",
    ):
        assert key in row
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "cifar_resnet8" and config["model_args"]["in_chans"] == 1
    assert config["pretrained_cfg"]["input_size"] == [1, 8, 8] and config["kdcompress"]["method"] == "ce"


def test_distill_kd_logs_each_weighted_term(runner, tmp_path, teacher_run):
    out = tmp_path / "kd"
    args = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    args += [
        "--student",
        "cifar_resnet8",
        "--method",
        "kd",
        "--out",
        str(out),
        *TINY,
        "--set",
        "method.temperature=2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss"] == pytest.approx(row["loss_ce"] + row["loss_kd"])
    assert "temperature: 2" in (out / "recipe.yaml").read_text()
    assert "teacher" in result.output


def test_eval_prints_metrics(runner, teacher_run):
    result = runner.invoke(app, ["eval", str(teacher_run), "--data", "digits"])
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "359" in result.output


def test_export_all_checks_onnx_parity(runner, teacher_run, tmp_path):
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(teacher_run), "--format", "all", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and (out / "model.safetensors").is_file()
    assert "on real inputs" in result.output and "on random inputs" in result.output
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"  # dynamic batch axis
    logits = session.run(None, {"input": torch.randn(3, 1, 8, 8).numpy()})[0]
    assert logits.shape == (3, 10)


ERROR_CASES = {
    "unknown arch": (["train", "--model", "resnet18q", *TINY], "Unknown architecture 'resnet18q'"),
    "unknown method": (
        ["distill", "--student", "cifar_resnet8", "--method", "kdd", *TINY],
        "Unknown method 'kdd'",
    ),
    "unknown data": (["train", "--model", "cifar_resnet8", "--data", "mnist"], "Unknown data source 'mnist'"),
    "missing weights": (
        [
            "distill",
            "--teacher",
            "cifar_resnet8",
            "--teacher-weights",
            "/nope.pth",
            "--student",
            "cifar_resnet8",
            *TINY,
        ],
        "does not exist",
    ),
    "no teacher": (["distill", "--student", "cifar_resnet8", "--method", "kd", *TINY], "needs a teacher"),
    "bad set path": (
        ["train", "--model", "cifar_resnet8", *TINY, "--set", "train.epoch=2"],
        "no field 'epoch'",
    ),
    "bad set value": (
        ["train", "--model", "cifar_resnet8", *TINY, "--set", "train.batch_size=-3"],
        "batch_size",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_user_errors_exit_2_with_one_sentence_and_no_folder(runner, tmp_path, case):
    args, message = ERROR_CASES[case]
    out = tmp_path / "run"
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_cuda_without_gpu_is_a_user_error(runner, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = runner.invoke(
        app, ["train", "--model", "cifar_resnet8", *TINY, "--device", "cuda", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 2 and "no usable CUDA GPU" in result.output


def test_corrupt_teacher_and_class_mismatch(runner, tmp_path, teacher_run):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    base = ["distill", "--student", "cifar_resnet8", "--method", "kd", *TINY, "--out", str(tmp_path / "r")]
    result = runner.invoke(app, [*base, "--teacher", "cifar_resnet8", "--teacher-weights", str(bad)])
    assert result.exit_code == 2 and "could not be read" in result.output
    result = runner.invoke(
        app,
        [
            *base,
            "--teacher",
            "cifar_resnet14",
            "--teacher-weights",
            str(teacher_run),
            "--data",
            "synthetic:5",
        ],
    )
    assert result.exit_code == 2 and "classes" in result.output


def test_existing_run_folder_is_protected(runner, teacher_run):
    result = runner.invoke(app, ["train", "--model", "cifar_resnet8", *TINY, "--out", str(teacher_run)])
    assert result.exit_code == 2 and "--resume" in result.output


def test_help_everywhere_and_python_dash_m(runner):
    commands = ["train", "distill", "eval", "export", "demo", "bench", "probe-layers", "recipes"]
    for command in commands:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, command
    done = subprocess.run([sys.executable, "-m", "kdcompress", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in commands)


def test_tables_in_a_log_file_are_not_cut_to_80_columns(tmp_path):
    """A job's log (stdout to a file) gets tables as wide as a leaderboard needs; COLUMNS still rules."""
    script = "from kdcompress.cli.common import console; print(console.width)"
    for env, expected in (({}, "160"), ({"COLUMNS": "100"}, "100")):
        log = tmp_path / "job.log"
        with log.open("w") as out:
            base = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
            subprocess.run([sys.executable, "-c", script], stdout=out, env={**base, **env}, check=True)
        assert log.read_text().strip() == expected


def test_help_and_recipes_list_import_neither_torch_nor_timm():
    """The CLI starts fast: building it and answering --help or `recipes list` loads no torch or timm."""
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from kdcompress.cli import app\n"
        "runner = CliRunner()\n"
        "commands = (['--help'], ['distill', '--help'], ['probe-layers', '--help'], ['recipes', 'list'])\n"
        "for args in commands:\n"
        "    assert runner.invoke(app, args).exit_code == 0, args\n"
        "heavy = ('torch', 'timm', 'onnx', 'onnxruntime', 'matplotlib')\n"
        "heavy = sorted(m for m in heavy if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"


def test_distill_from_a_shipped_recipe_name(runner, tmp_path, teacher_run):
    out = tmp_path / "quick"
    overrides = ["--set", f"teacher.weights={teacher_run}", "--set", "teacher.arch=cifar_resnet14"]
    result = runner.invoke(app, ["distill", "--recipe", "quickstart", *overrides, *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "name: kd" in (out / "recipe.yaml").read_text()
    result = runner.invoke(app, ["distill", "--recipe", "quickstrat", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "Did you mean 'quickstart'" in result.output


def test_export_follows_the_run_recipe_export_section(runner, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "--model",
        "cifar_resnet8",
        "--out",
        str(out),
        *TINY,
        "--set",
        "export.formats=[safetensors]",
    ]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["export", str(out), "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["config.json", "model.safetensors"]
