"""The CUDA path end to end, on a machine with a GPU: ``pytest -m cuda`` (``benchmarks/gpu_check.sh`` runs
these). Without CUDA every test here skips.

Each test mirrors one that CI runs on the CPU (tests/test_gpu_path.py, tests/test_scale.py, tests/test_cli.py,
tests/test_bench.py), so a failure here is something the device changes. Equivalence checks run in fp32
with TF32 off, so only summation order separates the two sides, as on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch
import yaml

from kdcompress import checkpoint
from kdcompress.cli import app
from kdcompress.methods import StepProgress
from kdcompress.train.display import RunDisplay
from tests.conftest import step_trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

CUDA = {"device": "cuda"}


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """fp32 convolutions and matmuls without TF32, whose 10-bit mantissa would swamp a 1e-4 comparison.
    (Set by hand: ``torch.backends.cuda.matmul`` is a proxy that monkeypatch cannot restore.)"""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def distill_args(teacher_run, method: str, out, *extra: str) -> list[str]:
    """``kdcompress distill`` of cifar_resnet14 -> cifar_resnet8 on tiny digits, on the GPU."""
    args = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    args += ["--student", "cifar_resnet8", "--method", method, "--data", "digits", "--batch-size", "64"]
    args += ["--device", "cuda", "--out", str(out), "--quiet"]
    for value in ("data.train_limit=256", "data.val_limit=128", *extra):
        args += ["--set", value]
    return args


def student_weights(run_dir):
    return checkpoint.load_tensors(run_dir / "last" / checkpoint.STUDENT_FILE)


@pytest.mark.parametrize("method", ["kd", "sd-dkd", "luminet", "featkd", "blockkd"])
def test_bf16_distill_end_to_end(runner, teacher_run, tmp_path, method):
    out = tmp_path / method
    args = distill_args(teacher_run, method, out, "train.precision=bf16")
    result = runner.invoke(app, [*args, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    recorded = yaml.safe_load((out / "recipe.yaml").read_text())["train"]
    assert recorded["device"] == "cuda" and recorded["precision"] == "bf16"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        losses = [value for key, value in row.items() if key.startswith("loss")]
        assert losses and all(math.isfinite(value) for value in losses), row
        assert 0 <= row["val_top1"] <= 100 and row["images_per_second"] > 0
    assert all(torch.isfinite(w).all() for w in student_weights(out).values() if w.is_floating_point())


@pytest.mark.parametrize("method", ["kd", "dkd", "nkd", "sd-dkd", "luminet", "featkd", "blockkd", "fitnet"])
def test_the_step_makes_no_cuda_sync(teacher_run, tmp_path, method):
    """CUDA's own detector, which also sees syncs made inside C++ operators (the CPU test sees Python's)."""
    trainer = step_trainer(teacher_run, tmp_path, method, steps=4, train=CUDA)
    assert trainer.precision == "bf16" and trainer.channels_last
    batches = list(trainer.train_loader.batches(1))
    # The first step initialises cuBLAS, cuDNN and the optimizer state; the steady state is what counts.
    trainer.train_step(batches[0], StepProgress(30, 0, 4))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step, batch in enumerate(batches[1:], start=1):
            trainer.train_step(batch, StepProgress(30, step, 4))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_reduce_overhead_compile_matches_eager(teacher_run, tmp_path, exact_fp32):
    """``compile_mode: reduce-overhead`` (CUDA graphs) is a pure speed switch: same losses and weights."""

    def trainer(name: str, **options):
        train = {**CUDA, "precision": "fp32", **options}
        return step_trainer(teacher_run, tmp_path / name, "dkd", steps=4, train=train)

    eager = trainer("eager")
    compiled = trainer("compiled", compile=True, compile_mode="reduce-overhead")
    batches = zip(eager.train_loader.batches(1), compiled.train_loader.batches(1), strict=True)
    for step, (a, b) in enumerate(batches):
        progress = StepProgress(30, step, 4)
        loss_eager = eager.train_step(a, progress)[0].detach().clone()
        loss_compiled = compiled.train_step(b, progress)[0].detach().clone()
        torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-4, atol=1e-5)
    for (name, w_eager), w_compiled in zip(
        eager.prepared.student.state_dict().items(),
        compiled.prepared.student.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(w_compiled, w_eager, rtol=1e-3, atol=1e-4, msg=name)


@pytest.mark.parametrize("method", ["kd", "featkd"])
def test_the_teacher_cache_on_the_device(teacher_run, tmp_path, exact_fp32, method):
    """The cache lives on the GPU; epoch 2 is served from it alone and trains like the live teacher."""

    def two_epochs(cache: bool):
        trainer = step_trainer(
            teacher_run,
            tmp_path / str(cache),
            method,
            steps=4,
            train={**CUDA, "precision": "fp32", "teacher_cache": cache},
            data={"augment": "none"},
        )
        with RunDisplay(trainer.console, 8, enabled=False) as display:
            for epoch in (1, 2):
                trainer.train_epoch(epoch, display)
        return trainer

    live, cached = two_epochs(False), two_epochs(True)
    assert cached.teacher_cache.hit_rate == 0.5
    assert all(store.device.type == "cuda" for store in cached.teacher_cache.stores)
    for (name, a), b in zip(
        live.method.state_dict().items(), cached.method.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_torchrun_with_nccl_on_one_gpu(teacher_run, tmp_path):
    """One torchrun process joins an NCCL group and trains through DDP (tests/test_scale.py has the gloo
    twin); NCCL refuses two processes on one GPU, so this is as far as one GPU goes."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    out = tmp_path / "torchrun"
    command = [*launcher, "-m", "kdcompress", *distill_args(teacher_run, "kd", out), "--epochs", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "NCCL_DEBUG": "INFO"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "NCCL INFO" in done.stdout + done.stderr  # the process group really was NCCL's
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert student_weights(out)


def test_bench_times_the_gpu(runner, teacher_run, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", str(teacher_run), "cifar_resnet8", "--data", "digits", "--json", str(out)]
    result = runner.invoke(app, [*args, "--batch-sizes", "1,64", "--repeats", "5", "--device", "cuda"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["machine"]["cuda_device"] == torch.cuda.get_device_name(0)
    for entry in report["models"]:
        assert {(r["device"], r["batch_size"]) for r in entry["latency"]} == {("cuda", 1), ("cuda", 64)}
        assert all(0 < r["median_ms"] <= r["p90_ms"] for r in entry["latency"])
        assert 0 <= entry["top1"] <= 100


def test_export_of_a_cuda_trained_run(runner, teacher_run, tmp_path):
    run_dir, export = tmp_path / "run", tmp_path / "export"
    trained = runner.invoke(app, [*distill_args(teacher_run, "kd", run_dir), "--epochs", "1"])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(app, ["export", str(run_dir), "--format", "all", "--out", str(export)])
    assert result.exit_code == 0, result.output
    assert (export / "model.onnx").is_file() and (export / "model.safetensors").is_file()
    assert "on real inputs" in result.output  # the ONNX file reproduced PyTorch on validation images
