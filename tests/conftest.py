"""Shared fixtures: tiny trained runs on the embedded digits data, isolated caches, a CLI runner."""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from kdcompress import checkpoint
from kdcompress.data import Batch
from kdcompress.recipe import validate_recipe
from kdcompress.runtime import Runtime, setup_runtime
from kdcompress.train import engine

#: torch threads in every test (and in the subprocesses that must compute the same float sums).
TEST_THREADS = 1
TINY_DATA = {"source": "digits", "train_limit": 256, "val_limit": 128}
TINY_TRAIN = {"device": "cpu", "batch_size": 64, "epochs": 1, "seed": 0}


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module: the benchmarks are scripts, not a package, so tests of
    their pure parts load them by path."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def ctrl_c_at_epoch(epoch: int) -> Iterator[None]:
    """Inside the block, a run is interrupted (KeyboardInterrupt, as from Ctrl-C) as ``epoch`` starts:
    a crash at a chosen moment, with everything before it checkpointed normally."""
    original = engine.Trainer.train_epoch

    def train_epoch(self: engine.Trainer, current: int, display: object) -> dict:
        if current == epoch:
            raise KeyboardInterrupt
        return original(self, current, display)

    engine.Trainer.train_epoch = train_epoch  # type: ignore[method-assign]
    try:
        yield
    finally:
        engine.Trainer.train_epoch = original  # type: ignore[method-assign]


def leftovers(folder: Path) -> list[str]:
    """Hidden entries a killed or failed write left in a run folder (its lock file is not one: it stays,
    and the kernel, not the file, says whether a process holds it)."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != checkpoint.LOCK_FILE]


def float64_batches(trainer: engine.Trainer, count: int) -> Iterator[Batch]:
    """The trainer's student, connectors and teacher switched to float64 (in place: the optimizer keeps the
    same parameters), then ``count`` of its epoch-1 batches in float64. Two training paths that differ
    only in summation order (memory layout, compiled kernels, DDP) then agree to ~1e-12, whatever this
    torch build's float32 kernels round to, while a layout or indexing bug still differs at the size of
    the update."""
    trainer.method.double()
    if trainer.prepared.teacher is not None:
        trainer.prepared.teacher.double()
    for batch in itertools.islice(trainer.train_loader.batches(1), count):
        images = batch.images.double()
        teacher = images if batch.teacher_images is batch.images else batch.teacher_images.double()
        yield Batch(images, batch.labels, batch.indices, batch.views, teacher)


def initial_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The student weights a recorded run started from (its seed fixes them)."""
    from kdcompress.recipe import read_yaml

    prepared = engine.prepare(validate_recipe(read_yaml(run_dir / "recipe.yaml")))
    return {k: v.detach().clone() for k, v in prepared.student.state_dict().items()}


def assert_same_training(
    got: dict[str, torch.Tensor],
    expected: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    rel: float = 1e-3,
) -> None:
    """Two trainings that differ only in summation order (DDP vs one process, a cached teacher) end with
    weights that agree to ``rel`` of what training changed. float32 rounding differs between torch builds
    and CPUs, so a fixed tolerance is luck; a real bug (a wrong average, a misplaced sample) is the size
    of the update itself."""
    for key, want in expected.items():
        update = float((want.double() - start[key].double()).abs().max())
        diff = float((got[key].double() - want.double()).abs().max())
        assert diff <= rel * update + 1e-7, f"{key}: differs by {diff:.3g} after an update of {update:.3g}"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep every test's caches out of the user's home and the thread count predictable: one thread, as
    the tests' models are tiny (a second thread only adds synchronisation, and on a machine whose other
    core is busy it stalls every op)."""
    monkeypatch.setenv("KDCOMPRESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture
def counted_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run folders the engine actually trains during the test (reuse checks count them)."""
    calls: list[str] = []
    original = engine.run

    def counting(recipe, run_dir, *args, **kwargs):
        calls.append(str(run_dir))
        return original(recipe, run_dir, *args, **kwargs)

    monkeypatch.setattr(engine, "run", counting)
    return calls


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def tiny_recipe(arch: str = "cifar_resnet8", method: str = "ce", **sections) -> dict:
    """A recipe dict that trains in about a second on digits (8x8, 256 samples)."""
    recipe = {
        "student": {"arch": arch},
        "data": dict(TINY_DATA),
        "method": {"name": method},
        "train": dict(TINY_TRAIN),
    }
    for key, value in sections.items():
        recipe[key] = {**recipe.get(key, {}), **value}
    return recipe


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cifar_resnet14 trained for 4 epochs on 512 digits (about 94% on the 128 validation images, in
    about a second): a stand-in teacher good enough for accuracy comparisons (int8 vs fp32)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    recipe = validate_recipe(tiny_recipe("cifar_resnet14", train={"epochs": 4}, data={"train_limit": 512}))
    engine.run(recipe, out, quiet=True)
    return out


def step_trainer(
    teacher_run: Path,
    out: Path,
    method: str,
    *,
    steps: int,
    batch: int = 32,
    train: dict | None = None,
    data: dict | None = None,
    runtime: Runtime | None = None,
) -> engine.Trainer:
    """A trainer of ``method`` (cifar_resnet14 -> cifar_resnet8 on digits, ``steps`` steps an epoch) for
    tests that drive ``train_step`` and ``train_epoch`` directly; those write nothing to ``out``."""
    recipe = tiny_recipe(
        "cifar_resnet8",
        method,
        teacher={"arch": "cifar_resnet14", "weights": str(teacher_run)},
        train={"batch_size": batch, **(train or {})},
        data={"train_limit": batch * steps, "val_limit": 32, **(data or {})},
    )
    prepared = engine.prepare(validate_recipe(recipe))
    runtime = runtime or setup_runtime(prepared.recipe.train.device)
    return engine.Trainer(prepared, out, runtime, Console(quiet=True), quiet=True)
