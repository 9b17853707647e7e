"""The training loop shared by ``train`` and ``distill``.

Everything a run needs is built and validated first (data, models, weights, method); only then is the
run folder created, so a bad input never leaves files behind. Each epoch ends with an evaluation and
three atomic writes: the best student (when it improved), the ``last/`` resume point, and the metrics.

Speed notes: the loss terms and accuracy are summed on the device and read by the host only every
``train.log_every`` steps and at the end of the epoch; the teacher runs under inference mode and the
same autocast as the student; data batches never leave the device.

Determinism: the data order, the augmentation views and the global torch RNG are all re-seeded from
(seed, epoch) at the start of every epoch, so resuming after epoch k replays epochs k+1.. exactly as
the uninterrupted run would have, without having to restore RNG states.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress
from torch import nn

from kdcompress import checkpoint
from kdcompress.data import Batch
from kdcompress.errors import DiskFull, UserError
from kdcompress.evaluate import autocast_for, evaluate, resolve_precision
from kdcompress.methods import Progress as StepProgress
from kdcompress.models import count_parameters
from kdcompress.recipe import Recipe
from kdcompress.run_lock import RunLock
from kdcompress.runtime import Runtime, all_reduce_sum, setup_runtime
from kdcompress.train.display import RunDisplay
from kdcompress.train.prepare import Prepared, prepare, seed_everything, student_config
from kdcompress.train.report import write_report
from kdcompress.train.result import RunInterrupted, RunResult
from kdcompress.train.resume import RECIPE_FILE, plan_resume
from kdcompress.train.schedule import build_optimizer, build_scheduler
from kdcompress.train.teacher_cache import TeacherCache
from kdcompress.train.teacher_check import check_teacher


class Trainer:
    """Runs one recipe into one run folder."""

    def __init__(
        self,
        prepared: Prepared,
        run_dir: Path,
        runtime: Runtime,
        console: Console,
        quiet: bool = False,
        shared_bar: Progress | None = None,
    ):
        self.prepared = prepared
        self.shared_bar = shared_bar
        self.recipe = prepared.recipe
        self.run_dir = run_dir
        self.runtime = runtime
        self.console = console
        self.quiet = quiet
        train = self.recipe.train
        self.precision = resolve_precision(train.precision, runtime.device)
        if self.precision in ("bf16", "fp16") and runtime.device.type == "cpu" and train.precision == "auto":
            self.precision = "fp32"
        self.channels_last = (
            train.channels_last if train.channels_last is not None else runtime.device.type == "cuda"
        )
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        self.method = prepared.method.to(runtime.device, memory_format=memory_format)
        if prepared.teacher is not None:
            prepared.teacher.to(runtime.device, memory_format=memory_format)
        world = runtime.world_size
        if train.batch_size % world:
            raise UserError(f"train.batch_size {train.batch_size} is not divisible by the {world} processes.")
        data = prepared.data
        workers = self.recipe.data.num_workers
        self.train_loader = data.train_loader(
            train.batch_size // world,
            runtime.device,
            seed=train.seed,
            rank=runtime.rank,
            world=world,
            workers=workers,
            specs=prepared.loader_specs,
            report_damage=False,  # once per epoch for the run (below), not once per pass
        )
        self.val_loader = data.val_loader(
            train.eval_batch_size,
            runtime.device,
            rank=runtime.rank,
            world=world,
            workers=workers,
            specs=prepared.loader_specs,
            report_damage=False,
        )
        samples = len(data.dataset.train) // world
        if samples < train.batch_size // world and runtime.is_main:
            warnings.warn(
                f"train.batch_size {train.batch_size} is larger than the {samples * world} training images, "
                f"so every epoch is a single batch of {samples * world}; lower train.batch_size for more "
                "steps per epoch.",
                stacklevel=2,
            )
        if len(self.train_loader) == 0:
            raise UserError(
                "The training split is smaller than one batch per process; lower train.batch_size."
            )
        self.step_model: nn.Module = self.method
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.step_model = nn.parallel.DistributedDataParallel(self.method, device_ids=device_ids)
        if train.compile:
            # Compile the networks in place, not the method: the loss math is cheap, and a method's
            # warm-up factor (a Python float that changes every epoch or step) would otherwise force a
            # recompile each time. In-place compilation also keeps state-dict keys unchanged.
            prepared.student.compile(mode=train.compile_mode)
            if prepared.teacher is not None:
                prepared.teacher.compile(mode=train.compile_mode)
        self.optimizer = build_optimizer(self.method, self.recipe.optim, runtime)
        self.scheduler = build_scheduler(
            self.optimizer,
            self.recipe.schedule,
            train.epochs,
            len(self.train_loader),
            self.recipe.optim.freeze_backbone_epochs,
        )
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=self.precision == "fp16")
        self.teacher_cache = self._build_teacher_cache()
        self.history: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.checkpoint_epochs: int | None = None  # the run length its resume checkpoint was made for
        self.start_epoch = 1
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.teacher_top1: float | None = None

    def _build_teacher_cache(self) -> TeacherCache | None:
        train, method = self.recipe.train, self.method
        wanted = train.teacher_cache or getattr(method.config, "cache_teacher_features", False)
        if not wanted or method.teacher is None:
            return None
        if not method.cacheable_teacher:
            raise UserError(
                f"Method '{method.name}' needs the teacher on every step; turn train.teacher_cache off."
            )
        if not self.prepared.data.views_identify_inputs:
            raise UserError(
                f"The teacher cache keys outputs by crop and flip, but data.augment="
                f"{self.recipe.data.augment} draws continuous random crops; turn train.teacher_cache off "
                "or use data.augment=crop_flip."
            )
        views = self.train_loader.transform.num_views
        samples = len(self.prepared.data.dataset.train)
        return TeacherCache(samples, views, self.runtime.device, train.teacher_cache_gb * 2**30)

    # ---- resume -------------------------------------------------------------------------------------
    def load_resume_state(self) -> None:
        source = checkpoint.last_dir(self.run_dir)
        state = torch.load(
            source / checkpoint.STATE_FILE, map_location=self.runtime.device, weights_only=False
        )
        self.prepared.student.load_state_dict(checkpoint.load_tensors(source / checkpoint.STUDENT_FILE))
        self.method.load_state_dict(state["method_extra"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # An extended run has a longer schedule; the stored LR belongs to the old one, so set the LR
        # the new schedule gives at this step before the first update.
        for group, base_lr, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base_lr * factor(self.scheduler.last_epoch)
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = state["epoch"] + 1
        self.best_top1, self.best_epoch = state["best_top1"], state["best_epoch"]
        self.teacher_top1 = state["teacher_top1"]
        self.history = state["history"]
        self.notes = list(state.get("notes", []))
        self.checkpoint_epochs = state.get("epochs")
        if self.runtime.is_main:
            self._write_metrics_file()

    def _write_metrics_file(self) -> None:
        lines = "".join(json.dumps(row) + "\n" for row in self.history)
        checkpoint.write_text(self.run_dir / "metrics.jsonl", lines)

    # ---- one step and one epoch ---------------------------------------------------------------------
    def teacher_outputs(self, batch: Batch, images: torch.Tensor) -> Any:
        if self.teacher_cache is None:
            return self.method.teacher_outputs(images)
        return self.teacher_cache.fetch(images, batch.indices, batch.views, self.method.teacher_outputs)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def train_step(self, batch: Batch, progress: StepProgress) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """One optimizer step: teacher outputs, student loss terms, backward, update (no host sync)."""
        images = self._layout(batch.images)
        # The teacher's own input when its spec differs; otherwise the very same tensor.
        teacher_images = (
            images if batch.teacher_images is batch.images else self._layout(batch.teacher_images)
        )
        with autocast_for(self.runtime.device, self.precision):
            teacher_out = self.teacher_outputs(batch, teacher_images)
            logits, terms = self.step_model(images, batch.labels, progress, teacher_out)
            loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.train.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.method.parameters(), self.recipe.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, logits, terms

    def train_epoch(self, epoch: int, display: RunDisplay) -> dict[str, float]:
        loader, device = self.train_loader, self.runtime.device
        seed_everything(self.recipe.train.seed, epoch)
        self.method.train()
        steps = len(loader)
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device)
        seen = 0
        log_every = self.recipe.train.log_every
        start = time.perf_counter()
        for step, batch in enumerate(loader.batches(epoch)):
            loss, logits, terms = self.train_step(batch, StepProgress(epoch, step, steps))
            for name, value in terms.items():
                sums[name] = sums.get(name, torch.zeros((), device=device)) + value.detach().float()
            correct += (logits.detach().argmax(1) == batch.labels).sum()
            seen += batch.labels.numel()
            current = None
            if (step + 1) % log_every == 0 or step + 1 == steps:
                current = float(loss.detach())  # the loop's host read, every log_every steps
                if not math.isfinite(current):
                    raise UserError(
                        f"Training diverged (loss {current} at epoch {epoch}, step {step + 1}); "
                        "lower optim.lr or use train.grad_clip."
                    )
            display.step(current)
        seconds = time.perf_counter() - start
        totals = torch.stack([*sums.values(), correct, torch.tensor(float(seen), device=device)])
        totals = all_reduce_sum(totals.double(), self.runtime).tolist()
        count = totals[-1]
        world = self.runtime.world_size
        row: dict[str, float] = {f"loss_{name}": totals[i] / steps / world for i, name in enumerate(sums)}
        row["loss"] = sum(row.values())
        row["train_top1"] = 100.0 * totals[-2] / count
        row["epoch_seconds"] = seconds
        row["images_per_second"] = count / seconds
        return row

    # ---- the run ------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, extended_from: int | None = None) -> RunResult:
        """Train the remaining epochs (all of them, or those after the last checkpoint with ``resume``).

        ``extended_from``: the epoch count the run was recorded with, when a resume extends it; the
        rewritten ``recipe.yaml`` and a note in the report say so."""
        runtime = self.runtime
        epochs = self.recipe.train.epochs
        if resume:
            self.load_resume_state()
            # An --extend that failed before its first checkpoint already rewrote recipe.yaml; the
            # checkpoint still knows the shorter length, so the report's note is not lost.
            if extended_from is None and (self.checkpoint_epochs or epochs) < epochs:
                extended_from = self.checkpoint_epochs
        elif self.prepared.teacher is not None:
            self.teacher_top1 = evaluate(
                self.prepared.teacher, self.val_loader, runtime, self.precision, teacher=True
            )["top1"]
            self._check_teacher(None)
        if extended_from is not None:
            lr = self.optimizer.param_groups[0]["lr"]
            self.notes.append(
                f"Extended from {extended_from} to {epochs} epochs after epoch {self.start_epoch - 1}: the "
                f"{self.recipe.schedule.name} schedule was rebuilt for {epochs} epochs, so epoch "
                f"{self.start_epoch} started at lr {lr:.3g}."
            )
        if runtime.is_main and (not resume or extended_from is not None):
            checkpoint.write_text(self.run_dir / RECIPE_FILE, self.recipe.to_yaml())
        if runtime.is_main and not resume:
            checkpoint.write_text(self.run_dir / "metrics.jsonl", "")
        show_bar = runtime.is_main and not self.quiet and self.console.is_terminal
        steps = len(self.train_loader)
        remaining = max(0, epochs - self.start_epoch + 1) * steps
        with RunDisplay(self.console, remaining, show_bar, self.shared_bar) as display:
            for epoch in range(self.start_epoch, epochs + 1):
                display.start_epoch(epoch, steps)
                row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
                for group in self.optimizer.param_groups[1:]:
                    row[f"lr_{group['name']}"] = group["lr"]
                row.update(self.train_epoch(epoch, display))
                display.end_epoch()
                val = evaluate(self.method.student, self.val_loader, runtime, self.precision)
                row.update(val_top1=val["top1"], val_top5=val["top5"], val_loss=val["loss"])
                improved = val["top1"] > self.best_top1
                if improved:
                    self.best_top1, self.best_epoch = val["top1"], epoch
                row["best_val_top1"] = self.best_top1
                self.history.append(row)
                if runtime.is_main:
                    self.prepared.data.report_damage()
                if epoch == 1 and not resume:
                    self._check_teacher(val["top1"])
                if runtime.is_main:
                    self._save_epoch(epoch, improved)
                    if not self.quiet:
                        self._print_epoch(row)
        return RunResult(
            self.run_dir,
            self.best_top1,
            self.best_epoch,
            self.history[-1]["val_top1"] if self.history else float("nan"),
            self.teacher_top1,
            count_parameters(self.prepared.student),
            count_parameters(self.prepared.teacher) if self.prepared.teacher is not None else None,
            self.history,
            list(self.notes),
        )

    def _check_teacher(self, student_top1: float | None) -> None:
        """Warn when the teacher does not seem to know the data as it is fed (:mod:`.teacher_check`);
        every process takes part in the check's evaluations, the main one prints."""
        prepared = self.prepared
        if self.teacher_top1 is None or prepared.teacher is None:
            return
        used = prepared.specs["teacher"]
        finding = check_teacher(
            prepared.teacher,
            prepared.data,
            used,
            self.teacher_top1,
            self.runtime,
            self.precision,
            assumed="teacher" in prepared.assumed,
            student_top1=student_top1,
        )
        message = finding.message(used)
        if message and self.runtime.is_main:
            warnings.warn(message, stacklevel=2)

    def _save_epoch(self, epoch: int, improved: bool) -> None:
        extra = {
            "epoch": epoch,
            "val_top1": self.history[-1]["val_top1"],
            "teacher_val_top1": self.teacher_top1,
        }
        extra.update(self.method.extra_state_for_report())
        config = student_config(self.prepared, extra)
        if improved:
            checkpoint.save_model_folder(self.run_dir, self.prepared.student, config)
        method_extra = {k: v for k, v in self.method.state_dict().items() if not k.startswith("student.")}
        state = {
            "epoch": epoch,
            "epochs": self.recipe.train.epochs,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method_extra": method_extra,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "teacher_top1": self.teacher_top1,
            "history": self.history,
            "notes": self.notes,
        }
        with checkpoint.atomic_dir(self.run_dir / checkpoint.LAST_DIR) as folder:
            checkpoint.save_model_folder(folder, self.prepared.student, config)
            checkpoint.save_torch(folder / checkpoint.STATE_FILE, state)
        self._write_metrics_file()

    def _print_epoch(self, row: dict[str, Any]) -> None:
        terms = " ".join(f"{k[5:]}={v:.4f}" for k, v in row.items() if k.startswith("loss_"))
        self.console.print(
            f"epoch {row['epoch']:>3}  loss {row['loss']:.4f} ({terms})  train {row['train_top1']:.2f}%  "
            f"val {row['val_top1']:.2f}%  best {row['best_val_top1']:.2f}%  "
            f"{row['images_per_second']:.0f} img/s",
            soft_wrap=True,
        )


def disk_full_message(exc: DiskFull, run_dir: Path, kept: bool) -> str:
    """What a full disk means for this run: continue it, or (nothing kept) start it again."""
    failed = str(exc).split(";")[0]
    if kept:
        return f"{failed}; the last completed epoch is kept: free some space and continue with --resume."
    return (
        f"{failed} before the run completed an epoch, so nothing was kept: free some space and run it again."
    )


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to mix a new run into an existing one; refuse to resume what is not a run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out '{run_dir}' is a file, not a folder; pass a new folder for the run.")
    if resume:
        if not (run_dir / RECIPE_FILE).is_file():
            raise UserError(
                f"There is nothing to resume in '{run_dir}' (no recipe.yaml: it holds no kdcompress run)."
            )
    elif run_dir.exists() and not checkpoint.holds_only_leftovers(run_dir):
        started = (run_dir / RECIPE_FILE).is_file() and checkpoint.last_dir(run_dir) is None
        hint = " (it has no completed epoch, so --resume starts it over)" if started else ""
        raise UserError(
            f"Run folder '{run_dir}' already holds a run; pass --resume to continue it{hint} or a new --out."
        )


def run(
    recipe: Recipe,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    extend: bool = False,
    shared_bar: Progress | None = None,
) -> RunResult:
    """Train ``recipe`` into ``run_dir`` (the library entry point behind ``train`` and ``distill``).

    With ``resume`` the run folder's recorded recipe is what trains (:mod:`kdcompress.train.resume`
    says what a request may change; ``extend`` allows more epochs). A Ctrl-C or SIGTERM becomes a
    :class:`RunInterrupted` that says what was kept.
    """
    console = console or Console(stderr=True)
    runtime = setup_runtime(recipe.train.device)
    lock = RunLock(run_dir)
    if runtime.is_main:
        if (resume and not run_dir.exists()) or (run_dir.exists() and not run_dir.is_dir()):
            check_run_dir(run_dir, resume)  # say what is wrong without creating or locking anything
        lock.acquire("this run")  # one writer per folder, before anything is written (rank 0's lock)
    prepared = trainer = None
    try:
        if resume and not (run_dir / RECIPE_FILE).is_file() and checkpoint.holds_only_leftovers(run_dir):
            # Killed inside its first write: nothing of the run was kept, so resuming is starting over.
            resume = False
            if runtime.is_main and not quiet:
                console.print(
                    f"Nothing of the run in '{run_dir}' was kept (it stopped in its first write): "
                    "starting over."
                )
        if runtime.is_main:
            check_run_dir(run_dir, resume)
        extended_from = None
        if resume:
            plan = plan_resume(run_dir, recipe, extend)
            recipe, extended_from = plan.recipe, plan.extended_from
        if runtime.is_main:
            checkpoint.remove_leftovers(run_dir)
        prepared = prepare(recipe)
        has_checkpoint = resume and checkpoint.last_dir(run_dir) is not None
        trainer = Trainer(prepared, run_dir, runtime, console, quiet, shared_bar)
        result = trainer.fit(has_checkpoint, extended_from)
    except BaseException as exc:
        kept = checkpoint.last_dir(run_dir) is not None
        # A run that failed before its first checkpoint leaves no folder behind.
        if lock.created and runtime.is_main and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)
        lock.release()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
            done = len(trainer.history) if trainer is not None else 0
            raise RunInterrupted(run_dir, done, recipe.train.epochs, kept) from None
        if isinstance(exc, DiskFull):
            raise DiskFull(disk_full_message(exc, run_dir, kept)) from None
        raise
    try:
        if runtime.is_main:
            write_report(result, prepared.recipe, prepared.method.extra_state_for_report())
    finally:
        lock.release()
    return result
