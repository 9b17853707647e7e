"""Experiment trackers: what TensorBoard, MLflow and W&B receive, read back with their own readers,
resume continuing the same tracker run, and failures that never stop training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from kdcompress.cli import app
from kdcompress.trackers.base import RunInfo, TrackerSet
from kdcompress.trackers.wandb import WandbTracker

pytestmark = pytest.mark.slow

TINY = ["--model", "cifar_resnet8", "--data", "digits", "--device", "cpu", "--batch-size", "64"]
TINY += ["--set", "data.train_limit=128", "--set", "data.val_limit=64", "-q"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_mirror_the_run_and_continue_it_on_resume(runner, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)  # the default MLflow store is ./mlruns
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", *TINY, "--epochs", "2", "--log", "tensorboard", "--log", "mlflow",
                                "--out", str(run)])  # fmt: skip
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--out", str(run), "--resume", "--extend", "--epochs", "3", "-q"])
    assert again.exit_code == 0, again.output
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    known = json.loads((run / "trackers.json").read_text())
    assert set(known) == {"tensorboard", "mlflow"}

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"val_top1", "train_top1", "loss", "loss_ce", "lr", "images_per_second"} <= set(scalars)
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("val_top1")] == [
        (r["epoch"], round(r["val_top1"], 3)) for r in rows
    ]  # one TensorBoard run whose curve continues after the resume
    assert "recipe" in " ".join(events.Tags()["tensors"])

    client = MlflowClient(tracking_uri=known["mlflow"]["tracking_uri"])
    assert known["mlflow"]["tracking_uri"] == (tmp_path / "mlruns").as_uri()
    experiment = client.get_experiment_by_name("kdcompress")
    listed = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in listed] == [known["mlflow"]["run_id"]]  # resumed, not duplicated
    mlrun = listed[0]
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["kdcompress.method"] == "ce"
    assert mlrun.data.params["optim.lr"] == "0.05" and mlrun.data.params["student.arch"] == "cifar_resnet8"
    history = client.get_metric_history(mlrun.info.run_id, "val_top1")
    assert [(m.step, round(m.value, 3)) for m in history] == [
        (r["epoch"], round(r["val_top1"], 3)) for r in rows
    ]
    assert {a.path for a in client.list_artifacts(mlrun.info.run_id)} == {"report.md", "curves.png"}
    assert mlrun.data.tags["kdcompress.file.weights"] == str(run / "student.safetensors")


def test_compare_runs_are_tagged_for_grouping(runner, tmp_path, teacher_run, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweep")
    args = ["compare", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run), "--student"]
    args += ["cifar_resnet8", "--data", "digits", "--methods", "ce,kd", "--epochs", "1", "--device", "cpu"]
    args += ["--set", "data.train_limit=128", "--set", "data.val_limit=64", "--log", "mlflow"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    tags = sorted((r.data.tags["kdcompress.method"], r.data.tags["kdcompress.seed"]) for r in runs)
    assert tags == [("ce", "0"), ("kd", "0")]
    assert {r.data.tags["kdcompress.compare"] for r in runs} == {str((tmp_path / "cmp").resolve())}
    assert {r.info.run_name for r in runs} == {"cifar_resnet8/ce/seed0", "cifar_resnet8/kd/seed0"}


def test_wandb_offline_keeps_the_run_on_disk_and_resumes_its_id(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    first = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--log", "wandb", "--out", str(run)])
    assert first.exit_code == 0, first.output
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]["id"]
    again = runner.invoke(app, ["train", "--out", str(run), "--resume", "--extend", "--epochs", "2", "-q"])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "trackers.json").read_text())["wandb"]["id"] == run_id
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert offline and all(folder.name.endswith(run_id) for folder in offline)
    assert all((folder / f"run-{run_id}.wandb").stat().st_size > 0 for folder in offline)


class FakeWandbRun:
    def __init__(self, **kwargs):
        self.kwargs, self.logged, self.summary, self.finished = kwargs, [], {}, None
        self.id, self.project = kwargs.get("id") or "abc123", kwargs["project"]

    def log(self, row, step):
        self.logged.append((step, row))

    def finish(self, exit_code=0):
        self.finished = exit_code


def test_the_wandb_adapter_passes_what_the_run_holds(tmp_path, monkeypatch):
    created: list[FakeWandbRun] = []
    fake = type(sys)("wandb")
    fake.init = lambda **kwargs: created.append(FakeWandbRun(**kwargs)) or created[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    recipe = {"student": {"arch": "cifar_resnet8"}, "method": {"name": "kd"}, "train": {"seed": 3}}
    tags = {"kdcompress.student": "cifar_resnet8", "kdcompress.method": "kd", "kdcompress.seed": "3",
            "kdcompress.compare": str(tmp_path / "cmp")}  # fmt: skip
    info = RunInfo(tmp_path / "cmp" / "kd" / "seed3", recipe, tags)
    trackers = TrackerSet([WandbTracker()], info)
    trackers.start()
    trackers.log_epoch({"epoch": 1, "val_top1": 50.0, "loss_kd": 0.5})
    (tmp_path / "report.md").write_text("# report")
    trackers.finish({"best_val_top1": 50.0}, {"report": tmp_path / "report.md", "gone": tmp_path / "none"})
    (run,) = created
    assert run.kwargs["config"] == recipe and run.kwargs["group"] == "cmp" and run.kwargs["resume"] == "allow"
    assert (
        run.kwargs["tags"] == ["cifar_resnet8", "kd", "3"] and run.kwargs["name"] == "cifar_resnet8/kd/seed3"
    )
    assert run.logged == [(1, {"val_top1": 50.0, "loss_kd": 0.5, "epoch": 1})]
    assert run.summary == {"best_val_top1": 50.0, "file/report": str(tmp_path / "report.md")}
    assert run.finished == 0
    resumed = TrackerSet([WandbTracker()], info)
    info.run_dir.mkdir(parents=True, exist_ok=True)
    (info.run_dir / "trackers.json").write_text(json.dumps({"wandb": {"id": "abc123", "project": "p"}}))
    resumed.start()
    assert created[-1].kwargs["id"] == "abc123"


def test_a_tracker_that_fails_is_dropped_with_one_warning_and_training_goes_on(runner, tmp_path, monkeypatch):
    from kdcompress.trackers.tensorboard import TensorBoardTracker

    def broken(self, row, epoch):
        raise OSError("No space left on device")

    monkeypatch.setattr(TensorBoardTracker, "log_epoch", broken)
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--epochs", "2", "--log", "tensorboard", "--out", str(run)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert (
        said.count("The tensorboard tracker failed to log an epoch (OSError: No space left on device)") == 1
    )
    assert len(metrics(run)) == 2 and (run / "report.md").is_file()


def test_a_missing_tracker_is_one_sentence_before_training(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an uninstalled package looks like to find_spec
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--log", "wandb", "--out", str(run)])
    assert result.exit_code == 2, result.output
    assert "`pip install 'kdcompress[wandb]'`" in result.output and not run.exists()
    unknown = runner.invoke(app, ["train", *TINY, "--epochs", "1", "--log", "neptune", "--out", str(run)])
    assert unknown.exit_code == 2 and "train.loggers" in unknown.output
