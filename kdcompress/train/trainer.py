"""The training loop shared by ``train`` and ``distill``: one step, one epoch, the whole run.

Each epoch ends with an evaluation and three atomic writes: the best student (when it improved), the
``last/`` resume point, and the metrics.

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
from kdcompress.errors import UserError
from kdcompress.evaluate import autocast_for, evaluate
from kdcompress.methods import StepProgress
from kdcompress.models import count_parameters
from kdcompress.runtime import Runtime, all_reduce_sum
from kdcompress.trackers.base import TrackerSet
from kdcompress.train import builders
from kdcompress.train.display import RunDisplay
from kdcompress.train.prepare import Prepared, seed_everything, student_config
from kdcompress.train.result import RunResult
from kdcompress.train.resume import RECIPE_FILE, RunPlan
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
        placement = builders.place(prepared, train, runtime)
        self.precision, self.channels_last = placement.precision, placement.channels_last
        self.method = prepared.method
        self.train_loader, self.val_loader = builders.loaders(prepared, train, runtime)
        self.step_model = builders.step_model(self.method, runtime)
        builders.compile_networks(prepared, train)
        self.optimizer, self.scheduler, self.scaler = builders.optimisation(
            prepared, len(self.train_loader), self.precision, runtime
        )
        self.teacher_cache = builders.teacher_cache(prepared, self.train_loader, runtime)
        self.history: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.start_epoch = 1
        self.best_top1 = -1.0
        self.best_epoch = 0
        self.teacher_top1: float | None = None
        self.trackers: TrackerSet | None = None  # experiment trackers (rank 0), set by the engine

    # ---- resume -------------------------------------------------------------------------------------
    def load_resume_state(self, source: Path) -> None:
        """Continue from the checkpoint in ``source`` (a ``last/`` folder): weights, optimizer, schedule,
        scaler, the epoch reached and the history so far."""
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
    def fit(self, plan: RunPlan) -> RunResult:
        """Train the remaining epochs: all of them, or those after the checkpoint the plan continues.

        ``plan.extended_from``: the epoch count the run was recorded with, when a resume extends it; the
        rewritten ``recipe.yaml`` and a note in the report say so."""
        runtime = self.runtime
        epochs = self.recipe.train.epochs
        resume = plan.continue_from is not None
        extended_from = plan.extended_from
        if plan.continue_from is not None:
            self.load_resume_state(plan.continue_from)
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
                    if self.trackers is not None:
                        self.trackers.log_epoch(row)
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
