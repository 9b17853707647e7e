"""What a run shows while it trains: a progress bar on a terminal, one line per epoch everywhere.

The bar advances every step (counting steps needs no host sync) and shows the run's time left as well
as the epoch's; the loss in its description is refreshed only when the engine reads it anyway (every
``train.log_every`` steps). Piped output (logs, CI) gets no bar, only the per-epoch lines.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(console: Console, enabled: bool = True) -> Progress:
    """The toolkit's progress bar: description, bar, count, time elapsed and time left."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=console, transient=True, disable=not enabled)


class RunDisplay:
    """A two-line bar (the run, the current epoch) that the engine advances step by step.

    ``shared``: a bar that is already live (``compare`` shows its overall task above every run's own);
    the run's tasks are added to it and removed at the end, instead of starting a bar of its own (rich
    allows one live display at a time)."""

    def __init__(
        self, console: Console, total_steps: int, enabled: bool, shared: Progress | None = None
    ) -> None:
        self.shared = shared is not None
        self.progress = shared if shared is not None else progress_bar(console, enabled)
        self.total_steps = total_steps
        self.run_task: TaskID | None = None
        self.epoch_task: TaskID | None = None
        self.epoch = 0

    def __enter__(self) -> RunDisplay:
        if not self.shared:
            self.progress.__enter__()
        self.run_task = self.progress.add_task("run", total=self.total_steps)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end_epoch()
        if self.shared:
            self.progress.remove_task(self.run_task)
        else:
            self.progress.__exit__(kind, exc, tb)

    def start_epoch(self, epoch: int, steps: int) -> None:
        self.epoch_task = self.progress.add_task(f"epoch {epoch}", total=steps)
        self.epoch = epoch

    def step(self, loss: float | None = None) -> None:
        """One optimizer step done; ``loss`` when the engine has just read it."""
        self.progress.advance(self.run_task)
        if self.epoch_task is None:
            return
        update: dict[str, Any] = {"advance": 1}
        if loss is not None:
            update["description"] = f"epoch {self.epoch} loss {loss:.4f}"
        self.progress.update(self.epoch_task, **update)

    def end_epoch(self) -> None:
        if self.epoch_task is not None:
            self.progress.remove_task(self.epoch_task)
            self.epoch_task = None
