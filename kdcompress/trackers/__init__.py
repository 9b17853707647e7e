"""Experiment trackers a run can mirror its progress to: TensorBoard, MLflow, W&B.

``train.loggers`` (``--log NAME``, repeatable) names them; each is an optional extra
(``pip install 'kdcompress[tensorboard]'``, ``[mlflow]``, ``[wandb]``, or ``[trackers]`` for all), and
asking for one that is not installed is refused before training starts. Only rank 0 logs under
torchrun. The run folder stays the source of truth: a tracker that fails is dropped with one warning.
docs/trackers.md says what each one receives.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from kdcompress.errors import UserError
from kdcompress.trackers.base import TRACKERS_FILE, RunInfo, Tracker, TrackerSet

#: Tracker name -> (the module that provides it, the import its library needs, the pip extra).
TRACKERS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("kdcompress.trackers.tensorboard:TensorBoardTracker", "tensorboard", "tensorboard"),
    "mlflow": ("kdcompress.trackers.mlflow:MLflowTracker", "mlflow", "mlflow"),
    "wandb": ("kdcompress.trackers.wandb:WandbTracker", "wandb", "wandb"),
}

__all__ = ["TRACKERS", "TRACKERS_FILE", "TrackerSet", "check_available", "open_trackers", "run_tags"]


def check_available(names: list[str]) -> None:
    """One sentence with the pip command for each asked-for tracker whose library is missing."""
    for name in names:
        _, package, extra = TRACKERS[name]
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):  # a package shadowed by None in sys.modules, or broken
            found = False
        if not found:
            raise UserError(
                f"The {name} tracker needs the '{package}' package, which is not installed; "
                f"`pip install 'kdcompress[{extra}]'` (or drop --log {name})."
            )


def _tracker(name: str) -> Tracker:
    module, _, cls = TRACKERS[name][0].partition(":")
    return getattr(importlib.import_module(module), cls)()


def run_tags(run_dir: Path, recipe: dict[str, Any]) -> dict[str, str]:
    """Tags that let a tracker group runs: student, method, seed, and the comparison folder when the run
    is one of a ``compare`` (``DIR/<method>/seed<k>`` or ``DIR/<student>/<method>/seed<k>``)."""
    tags = {
        "kdcompress.student": str(recipe["student"]["arch"]),
        "kdcompress.method": str(recipe["method"]["name"]),
        "kdcompress.seed": str(recipe["train"]["seed"]),
    }
    for compare in run_dir.resolve().parents[1:3] if len(run_dir.resolve().parents) > 2 else ():
        plan = compare / "compare.json"
        if plan.is_file():
            try:
                json.loads(plan.read_text())
            except ValueError:
                continue
            tags["kdcompress.compare"] = str(compare)
            break
    return tags


def open_trackers(names: list[str], run_dir: Path, recipe: dict[str, Any]) -> TrackerSet:
    """The started trackers of a run (reopened when ``trackers.json`` knows them)."""
    check_available(names)
    trackers = TrackerSet(
        [_tracker(name) for name in names], RunInfo(run_dir, recipe, run_tags(run_dir, recipe))
    )
    trackers.start()
    return trackers
