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
