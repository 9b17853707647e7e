"""What a tracker is, and the set of them a run logs to, where a failure never stops training.

A tracker mirrors what the run folder already holds (the run folder stays the source of truth): the
resolved recipe as parameters at the start, every ``metrics.jsonl`` row as it is written, the teacher's
accuracy, and at the end the report, the curves and the model files. Each one records how to find its
run again in ``<run>/trackers.json``, so a resumed run continues the same TensorBoard folder, MLflow run
or W&B run instead of starting a duplicate.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from kdcompress import checkpoint

TRACKERS_FILE = "trackers.json"


class Tracker(ABC):
    """One experiment tracker for one run. ``start`` returns what ``trackers.json`` keeps for a resume."""

    name: str

    @abstractmethod
    def start(self, run: RunInfo, previous: dict[str, Any] | None) -> dict[str, Any]:
        """Open (or, with ``previous``, reopen) the tracker's run; return its identity."""

    @abstractmethod
    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        """One ``metrics.jsonl`` row, at step ``epoch``."""

    @abstractmethod
    def finish(self, facts: dict[str, float], files: dict[str, Path]) -> None:
        """The run's summary numbers and files (report, curves, weights), then close."""

    @abstractmethod
    def abort(self) -> None:
        """The run stopped early (Ctrl-C, an error): close, marked as such where the tracker can."""


class RunInfo:
    """What every tracker is told about the run: its folder, name, recipe (flat and nested) and tags."""

    def __init__(self, run_dir: Path, recipe: dict[str, Any], tags: dict[str, str]):
        self.run_dir = run_dir
        self.name = run_dir.name if tags.get("kdcompress.compare") is None else _compare_name(run_dir, tags)
        self.recipe = recipe
        self.params = _flatten(recipe)
        self.tags = tags


def _compare_name(run_dir: Path, tags: dict[str, str]) -> str:
    parts = [tags.get("kdcompress.student", ""), tags.get("kdcompress.method", ""), run_dir.name]
    return "/".join(p for p in parts if p)


def _flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """``{"optim.lr": "0.05", ...}``: the recipe as parameters (lists and None as text)."""
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree) if isinstance(tree, list | dict) or tree is None else str(tree)}
    flat: dict[str, str] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class TrackerSet:
    """The trackers of a run, each call guarded: a tracker that fails (server down, disk full) warns once
    and is dropped; the training goes on."""

    def __init__(self, trackers: list[Tracker], run: RunInfo):
        self.trackers = trackers
        self.run = run

    def _guarded(self, tracker: Tracker, what: str, call: Any) -> Any:
        try:
            return call()
        except Exception as exc:  # any tracker failure: the run folder stays the record
            warnings.warn(
                f"The {tracker.name} tracker failed to {what} ({type(exc).__name__}: {exc}); the run goes on "
                f"without it (everything is in {self.run.run_dir}).",
                stacklevel=3,
            )
            self.trackers = [t for t in self.trackers if t is not tracker]
            return None

    def start(self) -> None:
        path = self.run.run_dir / TRACKERS_FILE
        known = json.loads(path.read_text()) if path.is_file() else {}
        for tracker in list(self.trackers):
            identity = self._guarded(tracker, "start", lambda t=tracker: t.start(self.run, known.get(t.name)))
            if identity is not None:
                known[tracker.name] = identity
        if known:
            checkpoint.write_json(path, known)

    def log_epoch(self, row: dict[str, Any]) -> None:
        numbers = {k: float(v) for k, v in row.items() if isinstance(v, int | float) and k != "epoch"}
        for tracker in list(self.trackers):
            self._guarded(tracker, "log an epoch", lambda t=tracker: t.log_epoch(numbers, int(row["epoch"])))

    def finish(self, facts: dict[str, float], files: dict[str, Path]) -> None:
        present = {name: path for name, path in files.items() if path.exists()}
        for tracker in list(self.trackers):
            self._guarded(tracker, "finish", lambda t=tracker: t.finish(facts, present))

    def abort(self) -> None:
        for tracker in list(self.trackers):
            self._guarded(tracker, "close", tracker.abort)
