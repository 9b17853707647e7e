"""TensorBoard: event files inside the run folder (``<run>/tensorboard``), written by torch's writer.

A resumed run writes into the same folder, so TensorBoard shows one run whose curves continue. The
recipe goes in as hyper-parameters (the HParams tab) and as text; the report, the curves and the model
files' paths as text at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdcompress.trackers.base import RunInfo, Tracker

LOG_DIR = "tensorboard"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def start(self, run: RunInfo, previous: dict[str, Any] | None) -> dict[str, Any]:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        log_dir = run.run_dir.resolve() / LOG_DIR
        self.writer = SummaryWriter(log_dir=str(log_dir))
        if previous is None:  # the parameters belong to the run once, not to every resume
            experiment, start, end = hparams(run.params, {"best_val_top1": 0.0})
            for summary in (experiment, start, end):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("recipe", "\n".join(f"    {k}: {v}" for k, v in run.params.items()))
            for key, value in run.tags.items():
                self.writer.add_text(f"tags/{key}", value)
        self.writer.flush()
        return {"log_dir": str(log_dir)}

    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        for key, value in row.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, facts: dict[str, float], files: dict[str, Path]) -> None:
        for key, value in facts.items():
            self.writer.add_scalar(key, value, 0)
        if "report" in files:
            self.writer.add_text("report", files["report"].read_text())
        self.writer.add_text("files", "\n".join(f"    {name}: {path}" for name, path in files.items()))
        self.writer.flush()
        self.writer.close()

    def abort(self) -> None:
        self.writer.close()
