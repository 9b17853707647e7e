"""MLflow: one MLflow run per kdcompress run, through the MLflow client.

Where it logs: ``MLFLOW_TRACKING_URI`` when the user has set it (a tracking server, a database), else a
local file store ``./mlruns`` so it works with no server (MLflow 3 keeps that store in maintenance mode
and asks for ``MLFLOW_ALLOW_FILE_STORE``, which kdcompress then sets for this default only). The
experiment is ``MLFLOW_EXPERIMENT_NAME``, else ``kdcompress``. The run's id is kept in ``trackers.json``;
a resumed run reopens it, so its metrics continue at the next epochs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from kdcompress.trackers.base import RunInfo, Tracker

DEFAULT_STORE = "mlruns"
MAX_PARAM = 500  # characters kept of one parameter value (MLflow limits their size)


def tracking_uri() -> str:
    """The user's tracking URI, else the local file store under the working directory."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path.cwd() / DEFAULT_STORE).resolve().as_uri()


class MLflowTracker(Tracker):
    name = "mlflow"

    def start(self, run: RunInfo, previous: dict[str, Any] | None) -> dict[str, Any]:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        uri = previous["tracking_uri"] if previous else tracking_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if previous:
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "kdcompress")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            tags = {**run.tags, "kdcompress.run_dir": str(run.run_dir)}
            created = self.client.create_run(experiment_id, run_name=run.name, tags=tags)
            self.run_id = created.info.run_id
            params = [Param(k, v[:MAX_PARAM]) for k, v in run.params.items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(self.run_id, params=params[start : start + 100])
            self.client.log_batch(
                self.run_id, tags=[RunTag("mlflow.note.content", f"kdcompress run {run.run_dir}")]
            )
        return {"run_id": self.run_id, "tracking_uri": uri}

    def log_epoch(self, row: dict[str, float], epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, epoch) for key, value in row.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, facts: dict[str, float], files: dict[str, Path]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(k, v, now, 0) for k, v in facts.items()],
            tags=[RunTag(f"kdcompress.file.{name}", str(path)) for name, path in files.items()],
        )
        for name in ("report", "curves"):
            if name in files:
                self.client.log_artifact(self.run_id, str(files[name]))
        self.client.set_terminated(self.run_id)

    def abort(self) -> None:
        self.client.set_terminated(self.run_id, status="KILLED")  # a resume sets it running again
