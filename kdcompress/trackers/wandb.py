"""Weights & Biases: one W&B run per kdcompress run, honouring the user's own W&B settings.

``WANDB_PROJECT`` (default ``kdcompress``), ``WANDB_ENTITY``, ``WANDB_MODE`` (``offline`` keeps
everything on disk for a later ``wandb sync``) and the user's login are W&B's own. Its local files go
into the run folder (``<run>/wandb``). Runs of one ``compare`` share a W&B group (the comparison
folder's name) and are tagged with their student, method and seed. The W&B run id is kept in
``trackers.json``; a resumed run continues it (``resume="allow"``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kdcompress.trackers.base import RunInfo, Tracker


class WandbTracker(Tracker):
    name = "wandb"

    def start(self, run: RunInfo, previous: dict[str, Any] | None) -> dict[str, Any]:
        import wandb

        compare = run.tags.get("kdcompress.compare")
        tags = [
            run.tags[k]
            for k in ("kdcompress.student", "kdcompress.method", "kdcompress.seed")
            if k in run.tags
        ]
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "kdcompress"),
            name=run.name,
            id=previous["id"] if previous else None,
            resume="allow",
            dir=str(run.run_dir),
            config=run.recipe,
            group=Path(compare).name if compare else None,
            tags=tags,
            reinit=True,
        )
        return {"id": self.run.id, "project": self.run.project}

    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        self.run.log({**row, "epoch": epoch}, step=epoch)

    def finish(self, facts: dict[str, float], files: dict[str, Path]) -> None:
        self.run.summary.update({**facts, **{f"file/{k}": str(v) for k, v in files.items()}})
        self.run.finish()

    def abort(self) -> None:
        self.run.finish(exit_code=1)
