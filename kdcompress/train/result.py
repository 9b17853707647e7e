"""What a finished run achieved: read by the report, the demo table and ``compare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunResult:
    run_dir: Path
    best_top1: float
    best_epoch: int
    last_top1: float
    teacher_top1: float | None
    student_params: int
    teacher_params: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the report must say about how the run went


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; says truthfully what was kept, for the one-line message."""

    def __init__(self, run_dir: Path, completed_epochs: int, total_epochs: int, kept: bool) -> None:
        super().__init__()
        self.run_dir, self.completed_epochs, self.total_epochs, self.kept = (
            run_dir,
            completed_epochs,
            total_epochs,
            kept,
        )

    def __str__(self) -> str:
        if not self.kept:
            return f"interrupted before the first epoch finished; nothing was kept in '{self.run_dir}'."
        return (
            f"interrupted; epochs 1-{self.completed_epochs} of {self.total_epochs} are kept in "
            f"'{self.run_dir}': continue with the same command and --resume."
        )
