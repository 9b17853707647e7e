"""The GPU training path, proven on the CPU: no host reads inside the step, bf16 autocast with float32
loss terms, channels_last, and the teacher cache for the feature methods.

On a GPU a host read (``.item()``, ``float(t)``, a Python ``if`` on a tensor) stalls the step until the
device catches up, so the engine reads the loss only every ``train.log_every`` steps. These tests count
the Python-level reads while a real epoch runs; ``tests/test_cuda.py`` adds CUDA's own sync detector on a
GPU, which also sees reads made inside C++ operators.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from rich.console import Console

from kdcompress.methods import StepProgress, entries
from kdcompress.train import engine
from kdcompress.train.display import RunDisplay
from tests.conftest import float64_batches, step_trainer

#: Every registered method with a teacher, by kind (aliases that only preset options are left out, but
#: the SDD variants stand for sdd, whose default base needs no extra option).
LOGIT_METHODS = sorted(e.name for e in entries() if e.kind == "logit" and e.name != "sdd" and e.in_all)
FEATURE_METHODS = sorted(e.name for e in entries() if e.kind == "feature" and not e.is_alias)
LOG_EVERY = 2
STEPS = 2 * LOG_EVERY + 1  # two periodic reads and the epoch's last step
BATCH = 32
#: Every Tensor method that copies a value to the host (a device sync on a GPU).
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def make_trainer(teacher_run, tmp_path, method: str, **sections) -> engine.Trainer:
    """A CPU trainer of ``method`` with ``STEPS`` steps an epoch and a loss read every ``LOG_EVERY``."""
    train = {"log_every": LOG_EVERY, **sections.pop("train", {})}
    out = tmp_path / method
    return step_trainer(teacher_run, out, method, steps=STEPS, batch=BATCH, train=train, **sections)


class HostReads:
    """Counts host reads by where the epoch is: ``step k`` (inside ``train_step``), ``loop k`` (the loop
    after step k, where the periodic loss read belongs) and ``summary`` (after the last batch)."""

    def __init__(self) -> None:
        self.where = "setup"
        self.events: Counter[str] = Counter()

    @contextmanager
    def counting(self) -> Iterator[HostReads]:
        """Replace the read methods on ``torch.Tensor`` with counting wrappers for the ``with`` block."""
        own = {name: torch.Tensor.__dict__.get(name) for name in HOST_READS}

        def wrap(original):
            def read(tensor, *args, **kwargs):
                self.events[self.where] += 1
                return original(tensor, *args, **kwargs)

            return read

        for name in HOST_READS:
            setattr(torch.Tensor, name, wrap(getattr(torch.Tensor, name)))
        try:
            yield self
        finally:
            for name, original in own.items():
                if original is None:
                    delattr(torch.Tensor, name)  # back to the inherited C implementation
                else:
                    setattr(torch.Tensor, name, original)

    def track(self, trainer: engine.Trainer) -> None:
        """Make ``trainer``'s step and loader report where the epoch is."""
        step, batches = trainer.train_step, trainer.train_loader.batches

        def train_step(batch, progress):
            self.where = f"step {progress.step}"
            try:
                return step(batch, progress)
            finally:
                self.where = f"loop {progress.step}"

        def all_batches(epoch: int = 0):
            yield from batches(epoch)
            self.where = "summary"

        trainer.train_step = train_step
        trainer.train_loader.batches = all_batches


def epoch_reads(trainer: engine.Trainer) -> tuple[Counter[str], dict[str, float]]:
    """Host reads of one instrumented epoch, and its metrics row."""
    reads = HostReads()
    reads.track(trainer)
    with RunDisplay(Console(quiet=True), STEPS, enabled=False) as display, reads.counting():
        row = trainer.train_epoch(1, display)
    return reads.events, row


def periodic_reads() -> Counter[str]:
    """One loss read every ``LOG_EVERY`` steps and at the epoch's last step, one read of the sums after."""
    logged = [k for k in range(STEPS) if (k + 1) % LOG_EVERY == 0 or k + 1 == STEPS]
    assert len(logged) == math.ceil(STEPS / LOG_EVERY)
    return Counter({**{f"loop {k}": 1 for k in logged}, "summary": 1})


@pytest.mark.parametrize("method", LOGIT_METHODS + FEATURE_METHODS)
def test_the_step_never_reads_the_host(teacher_run, tmp_path, method):
    trainer = make_trainer(teacher_run, tmp_path, method)
    assert len(trainer.train_loader) == STEPS and trainer.teacher_cache is None
    events, row = epoch_reads(trainer)
    assert events == periodic_reads()
    assert math.isfinite(row["loss"])


def test_the_teacher_cache_reads_one_count_per_step(teacher_run, tmp_path):
    """The documented exception (``teacher_cache.py``): one miss count per step, nothing else."""
    trainer = make_trainer(teacher_run, tmp_path, "kd", train={"teacher_cache": True})
    events, _ = epoch_reads(trainer)
    assert events == periodic_reads() + Counter({f"step {k}": 1 for k in range(STEPS)})


@pytest.mark.parametrize("method", LOGIT_METHODS + FEATURE_METHODS)
def test_bf16_autocast_on_the_cpu_keeps_the_loss_terms_in_float32(teacher_run, tmp_path, method):
    """``train.precision=bf16`` runs the networks in bf16 (the CUDA default, ``auto``) while every loss
    term stays float32, so CUDA differs from this tested path only by the device."""
    trainer = make_trainer(teacher_run, tmp_path, method, train={"precision": "bf16"})
    assert trainer.precision == "bf16"
    for step, batch in enumerate(itertools.islice(trainer.train_loader.batches(1), 3)):
        # Epoch 30 is past every warm-up, so each distillation term carries its full weight.
        loss, logits, terms = trainer.train_step(batch, StepProgress(30, step, STEPS))
        assert logits.dtype == torch.bfloat16  # autocast really ran the student in bf16
        assert {name: term.dtype for name, term in terms.items()} == dict.fromkeys(terms, torch.float32)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(torch.isfinite(term) and term > 0 for term in terms.values()), terms
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())


def _float64_steps(trainer: engine.Trainer, count: int) -> list[torch.Tensor]:
    return [
        trainer.train_step(batch, StepProgress(1, step, STEPS))[0].detach()
        for step, batch in enumerate(float64_batches(trainer, count))
    ]


@pytest.mark.parametrize("method", ["kd", "featkd", "blockkd"])
def test_channels_last_on_the_cpu_matches_the_default_memory_format(teacher_run, tmp_path, method):
    """``train.channels_last`` (on by default on CUDA) only changes memory layout: same losses and weights."""
    default = make_trainer(teacher_run, tmp_path, method, train={"channels_last": False})
    last = make_trainer(teacher_run, tmp_path, method, train={"channels_last": True})

    def convs(trainer: engine.Trainer) -> list[bool]:
        """Per 4-D weight: is it laid out channels_last (1x1 kernels are both layouts at once)?"""
        return [
            w.is_contiguous(memory_format=torch.channels_last)
            for w in trainer.method.parameters()
            if w.dim() == 4
        ]

    assert all(convs(last)) and not all(convs(default))
    for a, b in zip(_float64_steps(default, 3), _float64_steps(last, 3), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    assert all(convs(last))  # float64 kept the layout
    # The convolutions sum in another order, which three updates amplify; in float64 that stays far
    # below 1e-8, where float32 drifted to ~1e-4 on some builds. A layout bug differs by ~1e-1.
    for (name, a), b in zip(
        default.method.state_dict().items(), last.method.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9, msg=name)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_feature_methods_train_alike_from_the_teacher_cache(teacher_run, tmp_path, method):
    """Without augmentation epoch 2 is served from the cache alone (tuples of features for featkd); the
    weights match a live teacher's. Block-KD caches the teacher's logits; its stepping stones still run
    the teacher suffix with gradients on every step."""

    def two_epochs(cache: bool) -> engine.Trainer:
        trainer = make_trainer(
            teacher_run, tmp_path, method, train={"teacher_cache": cache}, data={"augment": "none"}
        )
        with RunDisplay(Console(quiet=True), 2 * STEPS, enabled=False) as display:
            for epoch in (1, 2):
                trainer.train_epoch(epoch, display)
        return trainer

    live, cached = two_epochs(False), two_epochs(True)
    assert cached.teacher_cache.hit_rate == 0.5  # epoch 1 all misses, epoch 2 all hits
    for (name, a), b in zip(
        live.method.state_dict().items(), cached.method.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
