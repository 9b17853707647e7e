"""One writer per run folder: a second writer is refused naming the live one, the kernel frees the lock of
a killed process, readers of a live run say what they read, and compare leaves live runs alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from kdcompress.analysis.compare import CompareRequest, run_comparison
from kdcompress.cli import app
from kdcompress.errors import UserError
from kdcompress.run_lock import RunLock, holder

pytestmark = pytest.mark.slow

TINY = ["--data", "digits", "--device", "cpu", "--batch-size", "64", "--set", "data.train_limit=256"]


def start_train(out: Path, *extra: str) -> subprocess.Popen:
    """``kdcompress train`` in its own process (one thread: two of them share the test machine)."""
    command = [sys.executable, "-m", "kdcompress", "train", "--model", "cifar_resnet8", *TINY, "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, *extra, "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def test_two_writers_started_together_one_trains_one_is_refused(tmp_path):
    out = tmp_path / "run"
    first = start_train(out, "--seed", "0", "--lr", "0.05", "--epochs", "15")
    second = start_train(out, "--seed", "1", "--lr", "0.3", "--epochs", "2")
    results = {proc.pid: (proc.wait(timeout=300), proc.stderr.read()) for proc in (first, second)}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    winner = next(pid for pid, (code, _) in results.items() if code == 0)
    refused = " ".join(next(err for code, err in results.values() if code == 2).split())
    assert f"is in use: process {winner} on " in refused and "pass another --out" in refused
    assert "Traceback" not in refused
    recipe = (out / "recipe.yaml").read_text()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    epochs = 15 if winner == first.pid else 2
    assert f"epochs: {epochs}\n" in recipe and len(rows) == epochs  # the folder tells one run's story


def test_a_live_run_refuses_resume_and_is_read_at_its_last_checkpoint(runner, tmp_path):
    out = tmp_path / "run"
    live = start_train(out, "--epochs", "400")
    try:
        wait_for(lambda: (out / "student.safetensors").is_file() and (out / "config.json").is_file())
        assert holder(out) is not None and holder(out).pid == live.pid
        resumed = runner.invoke(app, ["train", "--out", str(out), "--resume"])
        assert resumed.exit_code == 2 and f"process {live.pid}" in resumed.output, resumed.output
        evaluated = runner.invoke(app, ["eval", str(out)])
        assert evaluated.exit_code == 0, evaluated.output
        said = " ".join(evaluated.output.split())
        assert "is still being trained" in said and "best completed checkpoint so far (epoch" in said
    finally:
        live.kill()
        live.wait()


def test_kill_9_of_the_lock_holder_leaves_no_stale_lock(runner, tmp_path):
    out = tmp_path / "run"
    live = start_train(out, "--epochs", "12")
    wait_for(lambda: (out / "last" / "state.pt").is_file())
    os.kill(live.pid, signal.SIGKILL)
    assert live.wait() == -signal.SIGKILL
    assert holder(out) is None  # the kernel dropped the lock with the process
    resumed = runner.invoke(app, ["train", "--out", str(out), "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 12


def test_a_second_lock_in_one_process_is_refused_too(tmp_path):
    with RunLock(tmp_path / "run").acquire("the first"):
        with pytest.raises(UserError, match="is in use: process"):
            RunLock(tmp_path / "run").acquire("the second")
        assert holder(tmp_path / "run").pid == os.getpid()
    assert holder(tmp_path / "run") is None


def test_compare_leaves_a_run_another_process_trains_alone(tmp_path):
    request = CompareRequest(
        students=("cifar_resnet8",),
        data="digits",
        out=tmp_path / "cmp",
        methods=("ce",),
        seeds=(0, 1),
        epochs=1,
        batch_size=64,
        overrides=("data.train_limit=128", "data.val_limit=64"),
        device="cpu",
    )
    console = Console(record=True, width=200)
    with RunLock(tmp_path / "cmp" / "ce" / "seed1").acquire("an array task"):
        board, _ = run_comparison(request, console)
    assert board["rows"][0]["seeds"] == [0]
    assert "ce seed 1 is being trained by process" in console.export_text()
    board, _ = run_comparison(request, Console(quiet=True))  # later: collected and trained as usual
    assert board["rows"][0]["seeds"] == [0, 1]
    assert json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())["rows"][0]["seeds"] == [0, 1]
