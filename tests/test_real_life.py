"""Runs that survive real life: an honest --resume, kills at chosen moments, user errors as one sentence.

Each test is what a user meets at the command line (``kdcompress train/distill/export/eval``) on tiny
digits runs; the fault-injection test kills real processes inside checkpoint writes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from kdcompress import checkpoint
from kdcompress.cli import app
from kdcompress.recipe import validate_recipe
from kdcompress.train import engine
from tests.conftest import TEST_THREADS, ctrl_c_at_epoch, leftovers, tiny_recipe

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--data", "digits", "--set", "data.train_limit=256", "--set", "data.val_limit=128", "--quiet"]
TINY += ["--batch-size", "64", "--device", "cpu"]


def train(runner, out: Path, *extra: str):
    return runner.invoke(app, ["train", "--model", "cifar_resnet8", "--out", str(out), *TINY, *extra])


@pytest.fixture
def finished(runner, tmp_path) -> Path:
    out = tmp_path / "run"
    assert train(runner, out, "--epochs", "2").exit_code == 0
    return out


# ---- resume never lies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (["--data", "synthetic:10"], "data.source"),
        (["--lr", "1000000"], "optim.lr"),
        (["--model", "resnet10t"], "student.arch"),
        (["--seed", "3"], "train.seed"),
        (["--set", "schedule.name=step"], "schedule.name"),
        (["--batch-size", "32"], "train.batch_size"),
    ],
)
def test_resume_refuses_changes_to_what_was_trained(runner, finished, change, field):
    recorded = (finished / "recipe.yaml").read_text()
    args = ["train", "--out", str(finished), "--resume", "--epochs", "2", "--device", "cpu", "-q", *change]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"{field} differs" in result.output and len(result.output.strip().splitlines()) == 1
    assert (finished / "recipe.yaml").read_text() == recorded


def test_resume_of_a_distill_run_with_another_method_names_the_field(runner, tmp_path, teacher_run):
    out = tmp_path / "kd"
    base = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    base += ["--student", "cifar_resnet8", "--out", str(out), *TINY, "--epochs", "1"]
    assert runner.invoke(app, [*base, "--method", "sd-dkd"]).exit_code == 0
    # The same command resumes (an alias compares equal to what it resolved to) ...
    again = runner.invoke(app, [*base, "--method", "sd-dkd", "--resume"])
    assert again.exit_code == 0, again.output
    # ... another method is refused by name, not with the old "no option w_kd".
    result = runner.invoke(app, [*base, "--method", "dkd", "--resume"])
    assert result.exit_code == 2 and "method.name differs: recorded 'sdd', now 'dkd'" in result.output


def test_extending_epochs_needs_extend_and_is_recorded(runner, finished):
    result = runner.invoke(app, ["train", "--out", str(finished), "--resume", "--epochs", "3", "-q"])
    assert result.exit_code == 2 and "pass --extend" in result.output
    shorter = runner.invoke(app, ["train", "--out", str(finished), "--resume", "--epochs", "1", "-q"])
    assert shorter.exit_code == 2 and "cannot shorten" in shorter.output
    result = runner.invoke(
        app, ["train", "--out", str(finished), "--resume", "--epochs", "3", "--extend", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((finished / "recipe.yaml").read_text())["train"]["epochs"] == 3
    rows = [json.loads(line) for line in (finished / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    report = (finished / "report.md").read_text()
    assert "Extended from 2 to 3 epochs after epoch 2" in report and "3 epochs" in report
    config = json.loads((finished / "config.json").read_text())
    assert config["kdcompress"]["recipe"]["train"]["epochs"] == 3


def test_runtime_settings_may_change_on_resume(runner, finished):
    result = runner.invoke(
        app, ["train", "--out", str(finished), "--resume", "--epochs", "2", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output  # nothing left to train; the recorded run stands
    result = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(finished),
            "--resume",
            "--set",
            "train.log_every=7",
            "--set",
            "data.num_workers=0",
        ],
    )
    assert result.exit_code == 0, result.output


# ---- kills, signals, leftovers ---------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    import torch
    from tests.conftest import tiny_recipe
    from kdcompress.recipe import validate_recipe
    torch.set_num_threads({threads})  # as conftest sets it in the test process: the same float sums
    from kdcompress.train import engine
    engine.run(validate_recipe(tiny_recipe(train={{"epochs": 3}})), Path(sys.argv[1]), quiet=True)
    """
).format(root=str(ROOT), threads=TEST_THREADS)


def _counted_writes(tmp_path: Path, monkeypatch) -> list[str]:
    """The files an uninterrupted 3-epoch run writes, in order: one name per atomic write (``last`` for
    the swap of the resume folder)."""
    names: list[str] = []
    original = checkpoint._fault_point

    def record() -> None:
        names.append(sys._getframe(1).f_locals["path"].name)  # the file the calling write is for
        original()

    monkeypatch.setattr(checkpoint, "_fault_point", record)
    engine.run(validate_recipe(tiny_recipe(train={"epochs": 3})), tmp_path / "count", quiet=True)
    monkeypatch.undo()
    return names


@pytest.mark.slow
def test_sigkill_inside_checkpoint_writes_resumes_bit_identically(tmp_path, monkeypatch):
    """Kill -9 at chosen writes (not timing luck), each after its temporary file is complete and before
    it is renamed: see ``points``. Every killed run resumes to the uninterrupted run's weights."""
    recipe = validate_recipe(tiny_recipe(train={"epochs": 3}))
    engine.run(recipe, tmp_path / "full", quiet=True)
    full = checkpoint.load_tensors(tmp_path / "full" / "last" / "student.safetensors")
    writes = _counted_writes(tmp_path, monkeypatch)

    def nth(name: str, n: int) -> int:  # 1-based index of the n-th write of ``name`` (-1: the last)
        return [i for i, w in enumerate(writes, start=1) if w == name][n]

    points = [
        1,  # the run's first write (its recipe.yaml): nothing of the run exists yet
        nth("student.safetensors", 0),  # epoch 1's best student: no checkpoint exists yet
        nth("state.pt", 0),  # epoch 1's resume state, inside the new last/ folder
        nth("last", 1),  # epoch 2's swap of last/: between its two renames
        nth("metrics.jsonl", -1),  # epoch 3's metrics, after its checkpoint
        nth("report.md", 0),  # the report of the finished run
    ]
    procs = {
        point: subprocess.Popen(
            [sys.executable, "-c", KILL_SCRIPT, str(tmp_path / f"kill{point}")],
            env={**os.environ, checkpoint.KILL_AT_WRITE_ENV: str(point)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for point in points
    }
    for point, proc in procs.items():
        proc.wait(timeout=300)
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr.read().decode()[-2000:])
        folder = tmp_path / f"kill{point}"
        engine.run(recipe, folder, resume=True, quiet=True)
        resumed = checkpoint.load_tensors(folder / "last" / "student.safetensors")
        assert all(torch.equal(full[k], resumed[k]) for k in full), point
        assert not leftovers(folder), point
        rows = (folder / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3], point


def killed_at_write(out: Path, write: int) -> bool:
    """Run the tiny 3-epoch run into ``out`` and kill it (SIGKILL) inside its ``write``-th atomic write."""
    env = {**os.environ, checkpoint.KILL_AT_WRITE_ENV: str(write)}
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out)], env=env, capture_output=True)
    return done.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_a_run_killed_in_epoch_1_is_no_dead_end(runner, tmp_path):
    out = tmp_path / "run"
    assert killed_at_write(out, 3) and (out / "recipe.yaml").is_file()
    assert checkpoint.last_dir(out) is None
    again = runner.invoke(
        app, ["train", "--model", "cifar_resnet8", "--out", str(out), *TINY, "--epochs", "3"]
    )
    assert again.exit_code == 2 and "no completed epoch, so --resume starts it over" in again.output
    resumed = runner.invoke(app, ["train", "--out", str(out), "--resume", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_a_run_killed_in_its_first_write_can_simply_be_run_again(runner, tmp_path):
    out = tmp_path / "run"
    assert killed_at_write(out, 1) and not (out / "recipe.yaml").exists()
    assert [p.name for p in out.iterdir()]  # the killed write's temporary file
    again = runner.invoke(
        app, ["train", "--model", "cifar_resnet8", "--out", str(out), *TINY, "--epochs", "1", "-q"]
    )
    assert again.exit_code == 0, again.output
    assert not leftovers(out)


def test_ctrl_c_says_what_was_kept(runner, tmp_path):
    with ctrl_c_at_epoch(1):
        result = train(runner, tmp_path / "first", "--epochs", "3")
    assert result.exit_code == 130 and "before the first epoch finished; nothing was kept" in result.output
    assert not (tmp_path / "first").exists()
    with ctrl_c_at_epoch(2):
        result = train(runner, tmp_path / "second", "--epochs", "3")
    assert result.exit_code == 130 and "epochs 1-1 of 3 are kept" in result.output
    assert "--resume" in result.output


@pytest.mark.slow
def test_sigterm_stops_like_ctrl_c_with_the_checkpoint_kept(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "kdcompress", "train", "--model", "cifar_resnet8", "--out", str(out), *TINY]
    proc = subprocess.Popen([*args, "--epochs", "500"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while checkpoint.last_dir(out) is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert "are kept" in err.decode() and "Traceback" not in err.decode()
    assert checkpoint.last_dir(out) is not None


# ---- bad output places ----------------------------------------------------------------------------


def test_out_that_is_a_file(runner, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    result = train(runner, target, "--epochs", "1")
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    assert target.read_text() == "mine"


def test_read_only_out_is_one_sentence(runner, tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = train(runner, tmp_path / "ro" / "run", "--epochs", "1")
    assert result.exit_code == 2 and "the file system is read-only" in result.output
    assert "Traceback" not in result.output


def test_full_disk_keeps_the_previous_checkpoint(runner, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert train(runner, out, "--epochs", "1").exit_code == 0
    before = checkpoint.load_tensors(out / "last" / "student.safetensors")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    result = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2", "--extend", "-q"])
    assert (
        result.exit_code == 2
        and "The disk is full" in result.output
        and "the last completed epoch is kept" in result.output
    )
    after = checkpoint.load_tensors(out / "last" / "student.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not leftovers(out)
    monkeypatch.undo()
    again = runner.invoke(app, ["train", "--out", str(out), "--resume", "--epochs", "2", "--extend", "-q"])
    assert again.exit_code == 0, again.output
    assert "Extended from 1 to 2 epochs" in (out / "report.md").read_text()  # the failed try is no loss


def test_full_disk_before_the_first_checkpoint_says_nothing_was_kept(runner, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "run"
    result = train(runner, out, "--epochs", "1")
    assert result.exit_code == 2 and "nothing was kept" in result.output and "--resume" not in result.output
    assert not out.exists()


def test_resume_of_a_missing_folder_says_there_is_nothing_to_resume(runner, tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "nope"), "--resume", "-q"])
    assert result.exit_code == 2 and "There is nothing to resume" in result.output


# ---- meaningless results are warned about ---------------------------------------------------------


def test_paper_numbers_are_not_compared_on_another_dataset(runner, tmp_path, teacher_run):
    out = tmp_path / "run"
    args = [
        "distill",
        "--recipe",
        "cifar100/resnet32x4-resnet8x4/kd",
        "--out",
        str(out),
        *TINY,
        "--epochs",
        "1",
    ]
    args += ["--set", "teacher.arch=cifar_resnet14", "--set", f"teacher.weights={teacher_run}"]
    args += ["--set", "student.arch=cifar_resnet8", "--set", "data.augment=none"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "does not apply" in result.output
    report = (out / "report.md").read_text()
    assert "not compared: this run trained on digits" in report and "points)" not in report


def test_tiny_images_for_a_deep_downsampler_warn(runner, tmp_path):
    result = runner.invoke(
        app,
        [
            "train",
            "--model",
            "resnet18",
            "--out",
            str(tmp_path / "r"),
            *TINY,
            "--epochs",
            "1",
            "--set",
            "data.image_size=16",
        ],
    )
    assert result.exit_code == 0 and "resnet18 downsamples 32x" in result.output


def test_probe_with_fewer_samples_than_classes_warns(runner, teacher_run):
    args = ["probe-layers", "--teacher", "cifar_resnet14", "--teacher-weights", str(teacher_run)]
    result = runner.invoke(app, [*args, "--data", "digits", "--samples", "8", "--top-k", "1"])
    assert result.exit_code == 0 and "information term I is 0" in result.output


# ---- small things a user sees --------------------------------------------------------------------


def test_recipe_file_errors_name_the_line_and_suggest_fields(runner, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("student:\n  arch: [cifar_resnet8\n")
    result = runner.invoke(app, ["train", "--recipe", str(broken), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "at line 3" in result.output
    typo = tmp_path / "typo.yaml"
    typo.write_text("student:\n  arch: cifar_resnet8\ntrain:\n  epohcs: 3\n")
    result = runner.invoke(app, ["train", "--recipe", str(typo), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "Did you mean 'train.epochs'" in result.output


def test_recipes_list_never_cuts_names(runner):
    result = runner.invoke(app, ["recipes", "list"])  # piped output: one tab-separated line per recipe
    assert result.exit_code == 0
    names = [line.split("\t")[0] for line in result.output.splitlines()]
    assert "cifar100/resnet32x4-shufflev2/sd-dkd" in names and all("…" not in n for n in names)


def test_recorded_weight_paths_are_absolute(runner, tmp_path, teacher_run, monkeypatch):
    monkeypatch.chdir(teacher_run.parent)
    out = tmp_path / "kd"
    args = ["distill", "--teacher", "cifar_resnet14", "--teacher-weights", teacher_run.name]
    result = runner.invoke(
        app, [*args, "--student", "cifar_resnet8", "--out", str(out), *TINY, "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "recipe.yaml").read_text())["teacher"]["weights"] == str(
        teacher_run.resolve()
    )


def test_the_progress_bar_advances_every_step():
    from rich.console import Console

    from kdcompress.train.display import RunDisplay

    with RunDisplay(Console(force_terminal=True, width=100), total_steps=10, enabled=True) as display:
        display.start_epoch(1, 10)
        for step in range(7):
            display.step(0.5 if step == 4 else None)
        tasks = {task.description: task for task in display.progress.tasks}
        assert tasks["run"].completed == 7
        epoch = next(task for name, task in tasks.items() if name.startswith("epoch 1"))
        assert epoch.completed == 7 and "loss 0.5000" in epoch.description
