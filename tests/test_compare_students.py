"""``compare --students``: which student to ship. Students x methods x seeds as ordinary runs, costs and
budgets before training, latencies from the target device, deployed accuracy, the Pareto front, and the
cluster job array that trains a comparison elsewhere."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from kdcompress.analysis.compare.leaderboard import pareto_front
from kdcompress.cli import app

pytestmark = pytest.mark.slow

TINY = ["--data", "digits", "--epochs", "1", "--device", "cpu", "--batch-size", "64"]
TINY += ["--set", "data.train_limit=128", "--set", "data.val_limit=64"]


def compare_args(teacher_run, out, students: str, *extra: str) -> list[str]:
    args = ["compare", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    return [*args, "--students", students, "--methods", "ce,kd", *TINY, "--out", str(out), *extra]


def test_students_by_methods_by_seeds_with_deployed_accuracy_and_the_front(
    runner, tmp_path, teacher_run, counted_runs
):
    out = tmp_path / "cmp"
    args = compare_args(
        teacher_run, out, "cifar_resnet8,cifar_resnet14", "--seeds", "0,1", "--deploy", "int8"
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(counted_runs) == 8  # 2 students x (ce, kd) x 2 seeds
    for student in ("cifar_resnet8", "cifar_resnet14"):
        for method in ("ce", "kd"):
            for seed in (0, 1):
                run = out / student / method / f"seed{seed}"
                assert (run / "report.md").is_file()
                deployed = json.loads((run / "deployed-int8.json").read_text())
                assert deployed["precision"] == "int8" and 0 <= deployed["top1"] <= 100
                assert deployed["file"].endswith("model.int8.onnx")
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["deploy"] == {"precision": "int8", "batch": 1}
    students = {s["arch"]: s for s in board["students"]}
    assert set(students) == {"cifar_resnet8", "cifar_resnet14"}
    for entry in students.values():
        assert entry["best_ce"] == "ce" and entry["excluded"] is None
        assert entry["deploy"]["latency_ms"] > 0 and entry["deploy"]["file_mb"] > 0
        assert entry["deploy"]["precision"] == "int8" and entry["deploy"]["params"] == entry["params"]
    assert students["cifar_resnet14"]["params"] > students["cifar_resnet8"]["params"]
    rows = {(r["student"], r["method"]): r for r in board["rows"]}
    assert set(rows) == {(s, m) for s in students for m in ("ce", "kd")}
    for (student, _), row in rows.items():
        assert row["seeds"] == [0, 1] and row["deployed_top1_mean"] is not None
        assert row["latency_ms"] == students[student]["deploy"]["latency_ms"]
        own_ce = rows[(student, "ce")]["best_top1_mean"]
        assert row["gain_vs_best_ce"] == pytest.approx(row["best_top1_mean"] - own_ce)  # per student
    assert any(r["on_front"] for r in board["rows"])
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "leaderboard.md").read_text()
    assert "| student |" in text and "top-1 int8" in text and "◆" in text
    assert (out / "deploy" / "cifar_resnet8.int8.onnx").is_file()  # the file to bench on the target

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("deployed-int8.json")}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert len(counted_runs) == 8  # reused: nothing trained, nothing re-exported
    assert stamps == {p: p.stat().st_mtime_ns for p in out.rglob("deployed-int8.json")}


def test_a_budget_leaves_a_student_out_before_training_it(runner, tmp_path, teacher_run, counted_runs):
    out = tmp_path / "cmp"
    args = compare_args(teacher_run, out, "cifar_resnet8,cifar_resnet14", "--max-params", "100k")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert all("cifar_resnet8" in run for run in counted_runs) and len(counted_runs) == 2
    assert not (out / "cifar_resnet14").exists()
    board = json.loads((out / "leaderboard.json").read_text())
    excluded = {s["arch"]: s["excluded"] for s in board["students"]}
    assert excluded["cifar_resnet8"] is None
    assert "parameters > --max-params 100,000" in excluded["cifar_resnet14"]
    assert "left out before training" in (out / "leaderboard.md").read_text()
    every = runner.invoke(app, [*args[:-2], "--max-params", "1k"])
    assert every.exit_code == 2 and "Every student is over the deployment budget" in every.output


def test_latencies_measured_on_the_target_replace_local_timing(runner, tmp_path, teacher_run, counted_runs):
    out = tmp_path / "cmp"
    target = tmp_path / "phone.json"
    entry = {
        "name": "/sdcard/deploy/cifar_resnet8.fp32.onnx",
        "arch": "cifar_resnet8",
        "latency": [{"runtime": "onnxruntime", "device": "cpu", "batch_size": 1, "median_ms": 123.0}],
    }
    target.write_text(json.dumps({"models": [entry], "machine": {"processor": "arm64"}}))
    args = compare_args(teacher_run, out, "cifar_resnet8", "--latency-json", str(target), "--dry-run")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    slow = runner.invoke(app, [*args, "--max-latency-ms", "100"])
    assert slow.exit_code == 2 and "Every student is over the deployment budget" in slow.output
    two = compare_args(
        teacher_run, tmp_path / "two", "cifar_resnet8,cifar_resnet14", "--latency-json", str(target)
    )
    missing = runner.invoke(app, [*two, "--dry-run"])
    assert missing.exit_code == 2
    assert "no onnxruntime measurement of 'cifar_resnet14' at batch 1" in " ".join(missing.output.split())
    assert not counted_runs
    board = runner.invoke(app, compare_args(teacher_run, out, "cifar_resnet8", "--latency-json", str(target)))
    assert board.exit_code == 0, board.output
    student = json.loads((out / "leaderboard.json").read_text())["students"][0]
    assert (
        student["deploy"]["latency_ms"] == 123.0
        and "phone.json (arm64)" in student["deploy"]["latency_source"]
    )


def test_the_pareto_front_keeps_what_nothing_beats():
    # (latency, accuracy): b is slower and worse than a; d ties c on speed but is less accurate.
    points = [(1.0, 80.0), (2.0, 79.0), (3.0, 90.0), (3.0, 85.0), (5.0, 91.0)]
    assert pareto_front(points) == [True, False, True, False, True]


def fake_sbatch(folder) -> dict:
    """An ``sbatch`` on the PATH that records its arguments and answers like ``--parsable`` does."""
    folder.mkdir()
    script = folder / "sbatch"
    script.write_text(f'#!/usr/bin/env bash\necho "$@" > {folder}/args\necho "4242;cluster"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_a_job_array_trains_the_sweep_and_compare_collects_it(runner, tmp_path, teacher_run, counted_runs):
    out = tmp_path / "cmp"
    args = compare_args(teacher_run, out, "cifar_resnet8", "--slurm-partition", "gpu", "--slurm-gpus", "1")
    args += ["--slurm-time", "01:00:00", "--slurm-extra", "--account=vision", "--slurm-setup", "echo setup"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    jobs = (out / "jobs.txt").read_text().splitlines()
    assert len(jobs) == 2 and all(line.startswith("kdcompress ") for line in jobs)
    script = (out / "compare.sbatch").read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --partition=gpu", "#SBATCH --gres=gpu:1",
                 "#SBATCH --time=01:00:00", "#SBATCH --account=vision", "echo setup"):  # fmt: skip
        assert line in script
    env = {**os.environ, "KDCOMPRESS": f"{sys.executable} -m kdcompress", "OMP_NUM_THREADS": "1"}
    beyond = subprocess.run(
        ["bash", str(out / "compare.sbatch")],
        env={**env, "SLURM_ARRAY_TASK_ID": "7"},
        capture_output=True,
        text=True,
    )
    assert beyond.returncode == 2 and "jobs.txt has no line for task 7" in beyond.stderr
    for task in range(len(jobs)):  # what SLURM does: the same script, one task id each
        done = subprocess.run(
            ["bash", str(out / "compare.sbatch")],
            env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert not counted_runs
    collected = runner.invoke(app, args)
    assert collected.exit_code == 0, collected.output
    assert not counted_runs  # only collected
    board = json.loads((out / "leaderboard.json").read_text())
    assert {r["method"]: r["seeds"] for r in board["rows"]} == {"ce": [0], "kd": [0]}
    nothing = runner.invoke(app, [*args, "--dry-run"])
    assert nothing.exit_code == 0 and (out / "jobs.txt").read_text() == ""
    assert not (out / "compare.sbatch").exists()


def test_launch_submits_with_sbatch_or_says_how(runner, tmp_path, teacher_run, monkeypatch):
    args = compare_args(teacher_run, tmp_path / "cmp", "cifar_resnet8")
    fake = fake_sbatch(tmp_path / "bin")  # before PATH loses the system folders its script needs
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    refused = runner.invoke(app, [*args, "--launch", "slurm"])
    assert refused.exit_code == 2 and "sbatch is not on the PATH" in refused.output
    assert (tmp_path / "cmp" / "jobs.txt").is_file()
    monkeypatch.setenv("PATH", fake["PATH"])
    submitted = runner.invoke(app, [*args, "--launch", "slurm"])
    assert submitted.exit_code == 0, submitted.output
    assert "submitted job array 4242 (2 tasks)" in " ".join(submitted.output.split())
    recorded = (tmp_path / "bin" / "args").read_text()
    assert "--parsable" in recorded and recorded.strip().endswith("compare.sbatch")
