"""``kdcompress compare`` end to end on tiny digits: leaderboard files, reuse, resume, budgets, dry runs."""

from __future__ import annotations

import json
import shlex

import pytest

from kdcompress.cli import app
from kdcompress.train import engine


def compare_args(teacher_run, out, *extra: str) -> list[str]:
    args = ["compare", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    args += ["--student", "cifar_resnet8", "--data", "digits", "--out", str(out), "--methods", "ce,kd"]
    args += ["--seeds", "0,1", "--epochs", "1", "--device", "cpu", "--set", "data.train_limit=256"]
    return [*args, "--set", "data.val_limit=128", *extra]


def test_compare_writes_the_leaderboard_and_reuses_finished_runs(runner, tmp_path, teacher_run, counted_runs):
    out = tmp_path / "cmp"
    result = runner.invoke(app, compare_args(teacher_run, out))
    assert result.exit_code == 0, result.output
    assert len(counted_runs) == 4  # ce and kd, two seeds each
    board = json.loads((out / "leaderboard.json").read_text())
    assert set(board) >= {"budget", "teacher", "student", "best_ce", "rows"}
    assert board["best_ce"] == "ce" and board["teacher"]["top1"] is not None
    rows = {row["method"]: row for row in board["rows"]}
    assert set(rows) == {"ce", "kd"}
    for row in rows.values():
        assert row["seeds"] == [0, 1] and row["best_top1_mean"] is not None
        assert {
            "gain_vs_own_ce",
            "gain_vs_best_ce",
            "significant",
            "epoch_seconds",
            "images_per_second",
        } <= set(row)
    assert rows["kd"]["gain_vs_best_ce"] == pytest.approx(
        rows["kd"]["best_top1_mean"] - rows["ce"]["best_top1_mean"]
    )
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| kd |" in (out / "leaderboard.md").read_text()
    assert (out / "kd" / "seed1" / "report.md").is_file() and (out / "ce" / "seed0" / "report.md").is_file()

    again = runner.invoke(app, compare_args(teacher_run, out))
    assert again.exit_code == 0, again.output
    assert len(counted_runs) == 4  # nothing trained the second time


def test_an_interrupted_compare_completes_on_rerun(runner, tmp_path, teacher_run, monkeypatch):
    out = tmp_path / "cmp"
    original = engine.Trainer.train_epoch
    seen: list[str] = []

    def stop_in_second_run(self, epoch, display):
        seen.append(str(self.run_dir))
        if len({*seen}) == 2:
            raise KeyboardInterrupt
        return original(self, epoch, display)

    monkeypatch.setattr(engine.Trainer, "train_epoch", stop_in_second_run)
    result = runner.invoke(app, compare_args(teacher_run, out))
    assert result.exit_code == 130
    first = out / "ce" / "seed0"
    stamp = (first / "student.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(engine.Trainer, "train_epoch", original)
    result = runner.invoke(app, compare_args(teacher_run, out))
    assert result.exit_code == 0, result.output
    assert (first / "student.safetensors").stat().st_mtime_ns == stamp  # the first run was left alone
    board = json.loads((out / "leaderboard.json").read_text())
    assert all(row["seeds"] == [0, 1] for row in board["rows"])


def test_another_budget_in_the_same_folder_is_refused(runner, tmp_path, teacher_run):
    out = tmp_path / "cmp"
    assert runner.invoke(app, [*compare_args(teacher_run, out), "--dry-run"]).exit_code == 0
    result = runner.invoke(app, [*compare_args(teacher_run, out), "--epochs", "2", "--dry-run"])
    assert result.exit_code == 2 and "another budget (epochs: 1, now 2)" in result.output


def test_dry_run_commands_make_folders_that_compare_collects(runner, tmp_path, teacher_run, counted_runs):
    out = tmp_path / "cmp"
    result = runner.invoke(app, [*compare_args(teacher_run, out), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("kdcompress ")]
    assert len(lines) == 4 and all("--out" in line for line in lines)
    for line in lines:  # what a scheduler would run, one job each
        done = runner.invoke(app, [*shlex.split(line)[1:], "--quiet"])
        assert done.exit_code == 0, (line, done.output)
    trained = len(counted_runs)
    result = runner.invoke(app, compare_args(teacher_run, out))
    assert result.exit_code == 0, result.output
    assert len(counted_runs) == trained  # only collected
    assert {row["method"] for row in json.loads((out / "leaderboard.json").read_text())["rows"]} == {
        "ce",
        "kd",
    }


def test_compare_user_errors(runner, tmp_path, teacher_run):
    result = runner.invoke(app, [*compare_args(teacher_run, tmp_path / "a"), "--methods", "ce,kdd"])
    assert (
        result.exit_code == 2
        and "Unknown method 'kdd'" in result.output
        and "Did you mean 'kd'" in result.output
    )
    result = runner.invoke(app, [*compare_args(teacher_run, tmp_path / "b"), "--set", "method.betta=2"])
    assert result.exit_code == 2 and "none of the compared methods has the option 'betta'" in result.output
    args = ["compare", "--student", "cifar_resnet8", "--data", "digits", "--out", str(tmp_path / "c")]
    result = runner.invoke(app, [*args, "--methods", "kd"])
    assert result.exit_code == 2 and "need the teacher" in result.output
