"""Speed features that must not change results: the teacher cache, DDP over gloo (2 processes) and
torch.compile."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kdcompress import checkpoint
from kdcompress.recipe import validate_recipe
from kdcompress.train import engine
from kdcompress.train.teacher_cache import TeacherCache
from tests.conftest import assert_same_training, float64_batches, initial_weights, tiny_recipe


def weights(run_dir):
    return checkpoint.load_tensors(run_dir / "last" / "student.safetensors")


def test_cache_returns_what_the_teacher_computes_with_partial_hits():
    torch.manual_seed(0)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()
    images = torch.randn(6, 3, 2, 2)

    def compute(x):
        with torch.inference_mode():
            return {"logits": teacher(x), "twice": 2 * teacher(x)}

    cache = TeacherCache(num_samples=4, num_views=3, device=torch.device("cpu"), max_bytes=1e6)
    indices, views = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([0, 0, 0, 0, 1, 2])
    first = cache.fetch(images[:3], indices[:3], views[:3], compute)  # all misses
    both = cache.fetch(images, indices, views, compute)  # 3 hits, 3 misses
    assert cache.hits == 3 and cache.lookups == 9
    expected = compute(images)
    for key in ("logits", "twice"):
        torch.testing.assert_close(both[key], expected[key], rtol=0, atol=1e-6)
        torch.testing.assert_close(first[key], expected[key][:3], rtol=0, atol=1e-6)


def test_cache_refuses_to_exceed_its_budget():
    from kdcompress.errors import UserError

    cache = TeacherCache(num_samples=1000, num_views=162, device=torch.device("cpu"), max_bytes=1e3)
    with pytest.raises(UserError, match="teacher_cache_gb"):
        cache.fetch(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 0]), lambda x: x)


@pytest.mark.parametrize("augment", ["none", "crop_flip"])
def test_cached_teacher_trains_like_the_live_teacher(tmp_path, teacher_run, augment):
    def recipe(cache: bool):
        return validate_recipe(
            tiny_recipe(
                "cifar_resnet8",
                "kd",
                teacher={"arch": "cifar_resnet14", "weights": str(teacher_run)},
                train={"epochs": 3, "teacher_cache": cache},
                data={"augment": augment, "crop_padding": 1},
            )
        )

    engine.run(recipe(False), tmp_path / "live", quiet=True)
    engine.run(recipe(True), tmp_path / "cached", quiet=True)
    live, cached = weights(tmp_path / "live"), weights(tmp_path / "cached")
    assert_same_training(cached, live, initial_weights(tmp_path / "live"))


@pytest.mark.slow
def test_ddp_distill_over_two_gloo_processes_matches_one_process_and_resumes(tmp_path, teacher_run):
    """Same global batch (64 = 2 x 32): DDP's averaged gradients equal the single-process ones, and a
    DDP run stopped after epoch 1 and resumed under torchrun ends where one process does. (A constant
    LR makes "1 epoch, then resume to 2" the same schedule as "2 epochs".)

    The student is a LayerNorm model (timm test_vit), which keeps the comparison exact in principle:
    BatchNorm would use per-process statistics, which legitimately differ from full-batch ones. The
    teacher's BatchNorm is frozen in eval mode, so it is the same in every process.
    """
    args = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run), "--quiet"]
    args += ["--student", "test_vit", "--method", "kd", "--data", "digits"]
    args += ["--batch-size", "64", "--device", "cpu"]
    overrides = [
        "data.train_limit=256",
        "data.val_limit=64",
        "student.kwargs={img_size: 8, patch_size: 4}",
        "optim.lr=0.05",
        "schedule.name=constant",
        "export.formats=[]",
    ]
    args += [arg for value in overrides for arg in ("--set", value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]

    def run(command: list[str], out: str, *extra: str) -> None:
        done = subprocess.run(
            [*command, "-m", "kdcompress", *args, "--out", str(tmp_path / out), *extra],
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]

    run([sys.executable], "one", "--epochs", "2")
    run(launcher, "two", "--epochs", "1")
    run(launcher, "two", "--epochs", "2", "--resume", "--extend")
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert_same_training(two, one, initial_weights(tmp_path / "one"))
    metrics = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # rank 0 alone writes, and resume keeps epoch 1's row


def test_compiled_distill_steps_match_eager(tmp_path, teacher_run):
    """train.compile must be a pure speed switch: same losses and weights as eager, step for step."""
    from rich.console import Console

    from kdcompress.methods import StepProgress
    from kdcompress.runtime import setup_runtime

    def trainer(compiled: bool) -> engine.Trainer:
        recipe = tiny_recipe(
            "cifar_resnet8",
            "dkd",
            teacher={"arch": "cifar_resnet14", "weights": str(teacher_run)},
            train={"compile": compiled},
        )
        prepared = engine.prepare(validate_recipe(recipe))
        out = tmp_path / str(compiled)
        return engine.Trainer(prepared, out, setup_runtime("cpu"), Console(quiet=True), quiet=True)

    eager, compiled = trainer(False), trainer(True)
    batches = zip(float64_batches(eager, 2), float64_batches(compiled, 2), strict=True)
    for step, (a, b) in enumerate(batches):
        progress = StepProgress(1, step, len(eager.train_loader))
        loss_eager, *_ = eager.train_step(a, progress)
        loss_compiled, *_ = compiled.train_step(b, progress)
        torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-9, atol=1e-10)
    for (name, w_eager), w_compiled in zip(
        eager.prepared.student.state_dict().items(),
        compiled.prepared.student.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(w_compiled, w_eager, rtol=1e-8, atol=1e-9, msg=name)


def test_one_torchrun_process_runs_the_ddp_code_path(tmp_path, teacher_run, monkeypatch):
    """Under torchrun a single process still joins a process group and trains through DDP, so
    ``torchrun --nproc-per-node 1`` on one GPU checks NCCL; its steps equal a plain process's."""
    import socket

    import torch.distributed as dist

    from kdcompress.methods import StepProgress
    from kdcompress.runtime import all_reduce_sum, setup_runtime
    from tests.conftest import step_trainer

    plain = setup_runtime("cpu")
    assert not plain.distributed and not dist.is_initialized()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for key, value in {**launch, "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    try:
        runtime = setup_runtime("cpu")
        assert runtime.distributed and dist.get_backend() == "gloo" and dist.get_world_size() == 1
        assert all_reduce_sum(torch.ones(2), runtime).tolist() == [1.0, 1.0]
        trainers = [
            step_trainer(teacher_run, tmp_path / str(i), "kd", steps=2, runtime=r)
            for i, r in enumerate((plain, runtime))
        ]
        assert isinstance(trainers[1].step_model, torch.nn.parallel.DistributedDataParallel)
        for trainer in trainers:
            for step, batch in enumerate(float64_batches(trainer, 2)):
                trainer.train_step(batch, StepProgress(1, step, 2))
    finally:
        dist.destroy_process_group()
    alone, ddp = (t.prepared.student.state_dict() for t in trainers)
    for key in alone:
        torch.testing.assert_close(ddp[key], alone[key], rtol=1e-9, atol=1e-10)
