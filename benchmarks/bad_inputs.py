"""Give the installed CLI every ugly input a user can give it, and check each gets one clear sentence.

The product promises (docs/cli.md, "Conventions") that a mistake in the input prints one red sentence
on stderr and exits with code 2, never a traceback, and writes nothing half-done. The unit tests check
single messages from inside Python; this sweep checks the promise where users meet it: the installed
``kdcompress`` console script, one fresh subprocess per case, in a fresh temporary folder, with real
broken files, a read-only and a full file system (tmpfs mounts, so it must run as root), and resume
requests that would change a finished run. For the cases that act on a good run (resume, export, eval,
a rerun into its folder), the run's ``student.safetensors`` and ``last/`` are hashed before and after:
"nothing lost" means they are byte-identical.

A case is ok when it exits with its expected code (2, or 0 where the product now handles the input on
purpose, said in the case name), prints no traceback, and for exit 2 prints exactly one ``error:`` line
that reads as one sentence (a trailing "Did you mean ...?" hint allowed, at most 400 characters) with no
other stderr output than ``warning:`` lines; and nothing was lost. Every case runs with
OMP_NUM_THREADS=1 and HF_HUB_OFFLINE=1 (no network waits) and KDCOMPRESS_CACHE in the sweep's folder.

Usage: python benchmarks/bad_inputs.py [--json benchmarks/results/bad_inputs.json] [--cli PATH]
       [--only TEXT] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last)"
TIMEOUT_S = 240
MAX_MESSAGE = 400
VIT_HINT = r"teacher\.kwargs\.img_size"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: Folders this sweep mounted a tmpfs on; unmounted in ``main``'s ``finally`` whatever happens.
MOUNTS: list[Path] = []


def tiny(data: str = "digits", epochs: int = 1) -> list[str]:
    """Flags that make any training command finish in seconds on a busy CPU, with no export at the end
    (so a case measures its own input, not the exporter)."""
    return [
        *("--data", data, "--set", "data.train_limit=64", "--set", "data.val_limit=64"),
        *("--epochs", str(epochs), "--batch-size", "32", "--device", "cpu", "-q"),
        *("--set", "export.formats=[]"),
    ]


@dataclass
class Invocation:
    """What one case runs: CLI arguments, the paths whose bytes must survive, extra environment, and a
    look at the result afterwards (given the error sentence, it names a problem or returns None)."""

    args: list[str]
    guarded: list[Path] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[str], str | None] | None = None
    background: subprocess.Popen | None = None  # a live writer the case runs against (stopped after)


@dataclass
class Case:
    """One ugly input. ``build`` makes its fixtures in a fresh folder (given the good run) and says
    what to run."""

    name: str
    build: Callable[[Path, Path], Invocation]
    expected_exit: int = 2
    expect: str | None = None  # a regex the error sentence must contain (the hint the user needs)


# --------------------------------------------------------------------------------------------------
# Fixtures


def mount_tmpfs(folder: Path, options: str) -> Path:
    """Mount a tmpfs on ``folder``: the only way to get a truly read-only or truly full disk in a test,
    without touching the machine's real disks."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], check=True)
    MOUNTS.append(folder)
    return folder


def unmount_all() -> list[Path]:
    """Unmount every tmpfs this sweep mounted (lazily when busy); return the ones that stayed."""
    stuck = []
    while MOUNTS:
        folder = MOUNTS.pop()
        for command in (["umount", str(folder)], ["umount", "-l", str(folder)]):
            if subprocess.run(command, capture_output=True).returncode == 0:
                break
        else:
            stuck.append(folder)
    return stuck


def bytes_used(folder: Path) -> int:
    """What a copy of ``folder`` takes on a tmpfs: whole 4 KiB pages per file and per folder."""
    pages = 0
    for path in [folder, *folder.rglob("*")]:
        pages += 1 if path.is_dir() else -(-path.stat().st_size // 4096)
    return pages * 4096


def write_cifar_batch(path: Path, count: int, label_key: str, classes: int, str_keys: bool = False) -> None:
    """A real CIFAR "python version" batch (uint8 [N, 3072] + labels), with bytes keys as the original
    Python 2 pickles have, or str keys as a copy re-written by Python 3 has."""
    import numpy as np

    rng = np.random.default_rng(0)
    batch: dict[Any, Any] = {
        "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
        label_key: [int(i % classes) for i in range(count)],
        "filenames": [f"img{i}.png" for i in range(count)],
    }
    if not str_keys:
        batch = {key.encode(): value for key, value in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def cifar100_folder(work: Path, str_keys: bool = False) -> Path:
    """A tiny but valid ``cifar-100-python`` folder (train + test)."""
    folder = work / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test"):
        write_cifar_batch(folder / name, 128, "fine_labels", 100, str_keys)
    return folder


def truncate_half(path: Path) -> None:
    """Cut a file in the middle: what an interrupted download or copy leaves."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def copy_good_run(good: Path, into: Path) -> Path:
    """A copy of the good run, for cases that damage or fill up their own folder."""
    return Path(shutil.copytree(good, into / "run"))


def fingerprint(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each guarded file; a run folder stands for its student.safetensors and last/."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.append(path / "student.safetensors")
            files.extend(sorted(p for p in (path / "last").rglob("*") if p.is_file()))
        else:
            files.append(path)
    digest = {}
    for file in files:
        digest[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else "missing"
    return digest


# --------------------------------------------------------------------------------------------------
# The cases: output and disks


def out_is_file(work: Path, good: Path) -> Invocation:
    target = work / "notes.txt"
    target.write_text("a file the user keeps\n")
    return Invocation(["train", "--model", "cifar_resnet8", *tiny(), "--out", str(target)], [target])


def out_read_only(work: Path, good: Path) -> Invocation:
    folder = mount_tmpfs(work / "ro", "ro,size=1M")
    return Invocation(["train", "--model", "cifar_resnet8", *tiny(), "--out", str(folder / "run")])


def full_disk_train(work: Path, good: Path) -> Invocation:
    """The first checkpoint does not fit, so nothing is kept: the advice must not promise otherwise."""
    run = mount_tmpfs(work / "full", "size=300k") / "run"
    args = ["train", "--model", "resnet18", *tiny(), "--set", "data.image_size=16", "--out", str(run)]

    def check(message: str) -> str | None:
        if "--resume" in message and not (run / "recipe.yaml").is_file():
            return "advises --resume, but the run folder was removed (nothing was kept)"
        return None

    return Invocation(args, check=check)


def full_disk_resume(work: Path, good: Path) -> Invocation:
    """The copy fits with ~100 KiB to spare: the next epoch's checkpoint (hundreds of KiB) cannot."""
    size_k = (bytes_used(good) + 100 * 1024) // 1024
    run = copy_good_run(good, mount_tmpfs(work / "small", f"size={size_k}k"))
    args = ["train", "--resume", "--out", str(run), "--epochs", "3", "--extend", "-q", "--device", "cpu"]
    return Invocation(args, [run])


def live_writer(cli: Path, work: Path, out: Path, *args: str) -> subprocess.Popen:
    """A long ``train`` into ``out`` in the background, returned once it holds the folder's lock."""
    command = [str(cli), "train", "--model", "cifar_resnet8", *tiny(epochs=500), *args, "--out", str(out)]
    process = subprocess.Popen(
        command, cwd=work, env=base_env(work), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    lock = out / ".lock"
    deadline = time.monotonic() + TIMEOUT_S
    while not (lock.is_file() and f'"pid": {process.pid}' in lock.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the live writer did not start")
        time.sleep(0.1)
    return process


def two_writers(cli: Path) -> Callable[[Path, Path], Invocation]:
    """A second ``train --out R`` while the first still trains R (a command pasted twice)."""

    def build(work: Path, good: Path) -> Invocation:
        first = live_writer(cli, work, work / "run", "--seed", "0", "--lr", "0.05")
        args = ["train", "--model", "cifar_resnet8", *tiny(), "--seed", "1", "--lr", "0.3"]
        args += ["--out", str(work / "run")]

        def check(message: str) -> str | None:
            return None if f"process {first.pid}" in message else "does not name the live process"

        return Invocation(args, check=check, background=first)

    return build


def resume_live_run(cli: Path) -> Callable[[Path, Path], Invocation]:
    """``--resume`` of a copy of the good run that another process is extending right now."""

    def build(work: Path, good: Path) -> Invocation:
        run = copy_good_run(good, work)
        live = live_writer(cli, work, run, "--resume", "--extend")
        return Invocation(["train", "--out", str(run), "--resume", "-q"], background=live)

    return build


# The cases: data


def train_on(data: str, work: Path) -> Invocation:
    return Invocation(["train", "--model", "cifar_resnet8", *tiny(data), "--out", str(work / "run")])


def cifar_dir_is_file(work: Path, good: Path) -> Invocation:
    (work / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b not really")
    return train_on(f"cifar100:{work / 'cifar-100-python.tar.gz'}", work)


def cifar_truncated(work: Path, good: Path) -> Invocation:
    folder = cifar100_folder(work)
    truncate_half(folder / "train")
    truncate_half(folder / "test")
    return train_on(f"cifar100:{folder}", work)


def cifar_empty_pickle(work: Path, good: Path) -> Invocation:
    folder = cifar100_folder(work)
    (folder / "train").write_bytes(b"")
    return train_on(f"cifar100:{folder}", work)


def cifar10_as_cifar100(work: Path, good: Path) -> Invocation:
    folder = work / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, 32, "labels", 10)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"cat"] * 10}, protocol=2))
    return train_on(f"cifar100:{folder}", work)


def cifar_python3_pickles(work: Path, good: Path) -> Invocation:
    invocation = train_on(f"cifar100:{cifar100_folder(work, str_keys=True)}", work)
    weights = work / "run" / "student.safetensors"
    invocation.check = lambda message: None if weights.is_file() else "exit 0 but no student.safetensors"
    return invocation


def imagefolder_without_train(work: Path, good: Path) -> Invocation:
    (work / "images" / "val" / "cat").mkdir(parents=True)
    return train_on(f"imagefolder:{work / 'images'}", work)


def fashion_mnist_empty(work: Path, good: Path) -> Invocation:
    (work / "fmnist").mkdir()
    return train_on(f"fashion-mnist:{work / 'fmnist'}", work)


def unknown_data_source(work: Path, good: Path) -> Invocation:
    return train_on("mnist", work)


# The cases: models and methods


def train_with(work: Path, *extra: str, model: str = "cifar_resnet8") -> Invocation:
    return Invocation(["train", "--model", model, *tiny(), *extra, "--out", str(work / "run")])


def distill_with(work: Path, good: Path, *extra: str, weights: bool = True) -> Invocation:
    teacher = ["--teacher", "cifar_resnet8", *(["--teacher-weights", str(good)] if weights else [])]
    args = ["distill", *teacher, "--student", "cifar_resnet8", *extra]
    return Invocation([*args, *tiny(), "--out", str(work / "run")], [good] if weights else [])


def unknown_arch(work: Path, good: Path) -> Invocation:
    return train_with(work, model="resnet_nope")


def unknown_method(work: Path, good: Path) -> Invocation:
    return distill_with(work, good, "--method", "nope")


def no_gpu(work: Path, good: Path) -> Invocation:
    return train_with(work, "--device", "cuda")


def bad_precision(work: Path, good: Path) -> Invocation:
    return train_with(work, "--set", "train.precision=fp8")


def vit_other_size(work: Path, good: Path) -> Invocation:
    args = ["probe-layers", "--teacher", "vit_tiny_patch16_224", "--data", "digits"]
    return Invocation([*args, "--set", "data.image_size=32", "--list", "--device", "cpu"])


def kwargs_checkpoint_path(work: Path, good: Path) -> Invocation:
    return train_with(work, "--set", "student.kwargs.checkpoint_path=x")


def kwargs_pretrained(work: Path, good: Path) -> Invocation:
    return train_with(work, "--set", "student.kwargs.pretrained=true")


def random_teacher(work: Path, good: Path) -> Invocation:
    return distill_with(work, good, "--method", "kd", weights=False)


def teacher_wrong_classes(work: Path, good: Path) -> Invocation:
    """The good run learnt digits' 10 classes; synthetic:5 has 5."""
    weights = good / "student.safetensors"
    args = ["distill", "--teacher", "cifar_resnet8", "--teacher-weights", str(weights)]
    args += ["--student", "cifar_resnet8", "--method", "kd", *tiny("synthetic:5")]
    return Invocation([*args, "--out", str(work / "run")], [good])


def pretrained_not_cached(work: Path, good: Path) -> Invocation:
    """An empty Hub cache, so the case means the same on a machine that has the weights."""
    (work / "hf-cache").mkdir()
    invocation = train_with(work, "--init", "pretrained", model="resnet18.a1_in1k")
    invocation.env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(work / "hf-cache")}
    return invocation


# The cases: recipes and config


def recipe_file(work: Path, text: str) -> Invocation:
    (work / "recipe.yaml").write_text(text)
    return train_with(work, "--recipe", str(work / "recipe.yaml"))


def malformed_yaml(work: Path, good: Path) -> Invocation:
    return recipe_file(work, "student:\n  arch: cifar_resnet8\noptim:\n  lr: [0.05\n  momentum: 0.9\n")


def unknown_recipe_key(work: Path, good: Path) -> Invocation:
    return recipe_file(work, "student:\n  arch: cifar_resnet8\noptim:\n  lr: 0.05\n  mommentum: 0.9\n")


def unknown_set_key(work: Path, good: Path) -> Invocation:
    return train_with(work, "--set", "train.epoch=3")


def unknown_shipped_recipe(work: Path, good: Path) -> Invocation:
    return train_with(work, "--recipe", "cifar100/resnet32x4-resnet8x4/nope")


# The cases: resume


def resume_good(good: Path, *extra: str, verb: str = "train") -> Invocation:
    return Invocation([verb, "--resume", "--out", str(good), *extra, "-q", "--device", "cpu"], [good])


def resume_other_data(work: Path, good: Path) -> Invocation:
    return resume_good(good, "--data", "fashion-mnist")


def resume_huge_lr(work: Path, good: Path) -> Invocation:
    return resume_good(good, "--lr", "1e6")


def resume_fewer_epochs(work: Path, good: Path) -> Invocation:
    return resume_good(good, "--epochs", "1")


def resume_other_model(work: Path, good: Path) -> Invocation:
    return resume_good(good, "--model", "resnet10t")


def resume_other_method(work: Path, good: Path) -> Invocation:
    return resume_good(good, "--method", "dkd", verb="distill")


def resume_missing(work: Path, good: Path) -> Invocation:
    return Invocation(["train", "--resume", "--out", str(work / "no-such-run"), "-q", "--device", "cpu"])


def rerun_without_resume(work: Path, good: Path) -> Invocation:
    return Invocation(["train", "--model", "cifar_resnet8", *tiny(), "--out", str(good)], [good])


# The cases: export, eval, bench


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset an ONNX file declares (None when there is no readable file)."""
    import onnx

    if not path.is_file():
        return None
    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def export_opset(opset: int, honoured: bool) -> Callable[[Path, Path], Invocation]:
    """Export the good run at ``opset``: an honoured opset must be the one the file declares, a refused
    one must leave no file behind."""

    def build(work: Path, good: Path) -> Invocation:
        args = ["export", str(good), "--opset", str(opset), "--format", "onnx", "--out", str(work / "x")]

        def check(message: str) -> str | None:
            written = onnx_opset(work / "x" / "model.onnx")
            if not honoured:
                return None if written is None else f"refused, yet model.onnx (opset {written}) was left"
            return None if written == opset else f"model.onnx declares opset {written}, not {opset}"

        return Invocation(args, [good], check=check)

    return build


def export_not_a_run(work: Path, good: Path) -> Invocation:
    (work / "photos").mkdir()
    (work / "photos" / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    return Invocation(["export", str(work / "photos"), "--out", str(work / "x")])


def eval_corrupt_onnx(work: Path, good: Path) -> Invocation:
    """Random bytes under the export name, with a real config.json beside it, so the ONNX reader is
    what meets the damage."""
    folder = work / "export"
    folder.mkdir()
    shutil.copy(good / "config.json", folder / "config.json")
    (folder / "model.onnx").write_bytes(os.urandom(4096))
    return Invocation(["eval", str(folder / "model.onnx"), "--device", "cpu"], [good])


def eval_truncated_weights(work: Path, good: Path) -> Invocation:
    run = copy_good_run(good, work)
    truncate_half(run / "student.safetensors")
    return Invocation(["eval", str(run), "--device", "cpu", "--batch-size", "64"])


def bench_missing(work: Path, good: Path) -> Invocation:
    return Invocation(["bench", str(work / "runs" / "missing"), "--device", "cpu", "--repeats", "2"])


def all_cases(cli: Path) -> list[Case]:
    """Every ugly input, in the order a user meets them: where the run goes, the data, the models,
    the recipe, resuming, and using the trained model."""
    return [
        Case("--out is an existing regular file", out_is_file),
        Case("a second train into a folder another process is training", two_writers(cli), expect="in use"),
        Case("--resume of a run another process is training", resume_live_run(cli), expect="in use"),
        Case("--out on a read-only file system", out_read_only, expect="read-only"),
        Case("full disk while training (resnet18, 300k tmpfs)", full_disk_train, expect="disk is full"),
        Case("full disk during --resume --extend (copy on a small tmpfs)", full_disk_resume, expect="full"),
        Case("cifar100:DIR where DIR is a file", cifar_dir_is_file),
        Case("cifar100 with truncated train/test pickles", cifar_truncated),
        Case("cifar100 with an empty train pickle", cifar_empty_pickle, expect="empty"),
        Case("CIFAR-10 folder given as cifar100", cifar10_as_cifar100, expect="cifar10"),
        Case("cifar100 pickles with str keys (Python 3): meant to load, exit 0", cifar_python3_pickles, 0),
        Case("imagefolder:DIR without train/", imagefolder_without_train, expect="train"),
        Case("fashion-mnist:DIR on an empty folder", fashion_mnist_empty),
        Case("unknown data source name", unknown_data_source),
        Case("unknown architecture", unknown_arch),
        Case("unknown method", unknown_method),
        Case("--device cuda without a GPU", no_gpu, expect="--device cpu"),
        Case("bad precision (train.precision=fp8)", bad_precision, expect="precision"),
        Case("ViT at image size 32 (probe-layers --list)", vit_other_size, expect=VIT_HINT),
        Case("student.kwargs.checkpoint_path=x", kwargs_checkpoint_path),
        Case("student.kwargs.pretrained=true", kwargs_pretrained),
        Case("distill without --teacher-weights (random teacher)", random_teacher, expect="teacher-weights"),
        Case("teacher weights with the wrong class count", teacher_wrong_classes, expect="classes"),
        Case("pretrained tag not in the local HF cache (offline)", pretrained_not_cached, expect="download"),
        Case("malformed YAML recipe", malformed_yaml, expect=r"line \d+"),
        Case("unknown key in a recipe YAML", unknown_recipe_key, expect="mommentum"),
        Case("unknown --set key", unknown_set_key, expect="epoch"),
        Case("unknown shipped recipe name", unknown_shipped_recipe),
        Case("--resume with other data (fashion-mnist)", resume_other_data, expect="data.source"),
        Case("--resume with --lr 1e6", resume_huge_lr, expect="optim.lr"),
        Case("--resume with --epochs shorter than done", resume_fewer_epochs, expect="shorten"),
        Case("--resume with another model (resnet10t)", resume_other_model, expect="student.arch"),
        Case("--resume with another method (distill --method dkd)", resume_other_method, expect="method"),
        Case("--resume on a folder that does not exist", resume_missing, expect="nothing to resume"),
        Case("rerun into the good run's folder without --resume", rerun_without_resume, expect="--resume"),
        Case("export --opset 30", export_opset(30, honoured=False), expect="opset"),
        Case("export --opset 13: meant to be honoured, exit 0", export_opset(13, honoured=True), 0),
        Case("export of a folder that is not a run", export_not_a_run),
        Case("eval of a corrupt .onnx (random bytes)", eval_corrupt_onnx, expect="ONNX"),
        Case("eval of a truncated student.safetensors", eval_truncated_weights),
        Case("bench on a missing path", bench_missing),
    ]


# --------------------------------------------------------------------------------------------------
# Running and judging


@dataclass
class Outcome:
    """What the process did: exit code (None on timeout), its text output, and how long it took."""

    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float


def base_env(sweep_dir: Path) -> dict[str, str]:
    """One CPU thread (two benchmarks may share the machine), no network, a private cache."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "KDCOMPRESS_CACHE": str(sweep_dir / "cache"),
    }


def run_cli(cli: Path, args: list[str], cwd: Path, env: dict[str, str]) -> Outcome:
    """One CLI call in its own process group, so a timeout also stops its data-loader workers."""
    start = time.monotonic()
    process = subprocess.Popen(
        [str(cli), *args], cwd=cwd, env=env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT_S)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        code, stderr = None, stderr + f"\n(timed out after {TIMEOUT_S} s)"
    return Outcome(code, ANSI.sub("", stdout), ANSI.sub("", stderr), time.monotonic() - start)


def first_error(stderr: str) -> str:
    """The line a user reads: the first ``error:`` line, else the last thing printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return errors[0] if errors else (lines[-1] if lines else "")


def reads_as_one_sentence(message: str) -> bool:
    """No sentence break outside quotes, parentheses and backticks (where paths and the wrapped
    exception live), ending in a full stop; a closing "Did you mean ...?" hint is allowed."""
    text = message.removeprefix("error:").strip()
    text = re.sub(r"\s*Did you mean [^?]*\?$", "", text)
    for _ in range(3):
        text = re.sub(r"\([^()]*\)", "()", text)
    text = re.sub(r"`[^`]*`", "``", text)
    text = re.sub(r"'[^'\s]*'", "''", text)
    return bool(text) and text[-1] in ".?!" and not re.search(r"[.!?]\s+[A-Z]", text)


def problems_with(case: Case, outcome: Outcome, message: str) -> list[str]:
    """Everything that breaks the promise for this case, in words (empty: the case behaved)."""
    problems = []
    if outcome.exit_code != case.expected_exit:
        problems.append(f"exit {outcome.exit_code}, expected {case.expected_exit}")
    if TRACEBACK in outcome.stdout or TRACEBACK in outcome.stderr:
        problems.append("traceback")
    if case.expected_exit != 2:
        return problems
    lines = [line.strip() for line in outcome.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    noise = [line for line in lines if not line.startswith(("error:", "warning:"))]
    if len(errors) != 1:
        problems.append(f"{len(errors)} error: lines")
    if noise:
        problems.append(f"{len(noise)} other stderr line(s), e.g. {noise[0][:120]!r}")
    if errors and not reads_as_one_sentence(message):
        problems.append("not one sentence")
    if len(message) > MAX_MESSAGE:
        problems.append(f"{len(message)} characters long")
    if errors and case.expect and not re.search(case.expect, message):
        problems.append(f"message lacks {case.expect!r}")
    return problems


def run_case(case: Case, cli: Path, good: Path, sweep_dir: Path) -> dict[str, Any]:
    """Build the case's fixtures in a fresh folder, run it, and judge the outcome."""
    work = Path(tempfile.mkdtemp(prefix="case-", dir=sweep_dir))
    lost: bool | None = None
    try:
        invocation = case.build(work, good)
    except Exception as exc:  # a fixture that cannot be made (no root for mount, say) is a failed case
        invocation, outcome = Invocation([]), Outcome(None, "", f"setup failed: {exc}", 0.0)
        problems = [f"setup failed: {type(exc).__name__}: {exc}"]
    else:
        before = fingerprint(invocation.guarded)
        try:
            outcome = run_cli(cli, invocation.args, work, {**base_env(sweep_dir), **invocation.env})
        finally:
            if invocation.background is not None:
                os.killpg(invocation.background.pid, signal.SIGKILL)
                invocation.background.wait()
        if invocation.guarded:
            lost = fingerprint(invocation.guarded) != before
        problems = problems_with(case, outcome, first_error(outcome.stderr))
        problems += ["guarded files changed"] if lost else []
        found = invocation.check(first_error(outcome.stderr)) if invocation.check else None
        problems += [found] if found else []
    message = first_error(outcome.stderr)
    command = shlex.join(["kdcompress", *invocation.args])
    if invocation.env:
        command = " ".join(f"{k}={shlex.quote(v)}" for k, v in invocation.env.items()) + " " + command
    return {
        "case": case.name,
        "command": command,
        "exit_code": outcome.exit_code,
        "traceback": TRACEBACK in outcome.stdout or TRACEBACK in outcome.stderr,
        "message": message,
        "expected_exit": case.expected_exit,
        "ok": not problems,
        "nothing_lost": None if lost is None else not lost,
        "problems": problems,
        "seconds": round(outcome.seconds, 1),
        "stderr_tail": outcome.stderr[-2000:] if problems else "",
    }


def make_good_run(cli: Path, sweep_dir: Path) -> Path:
    """The finished 2-epoch run that resume, export and eval cases act on (2 epochs, so that a
    shorter --epochs can be asked for)."""
    good = sweep_dir / "good"
    args = ["train", "--model", "cifar_resnet8", *tiny(epochs=2), "--out", str(good)]
    outcome = run_cli(cli, args, sweep_dir, base_env(sweep_dir))
    if outcome.exit_code != 0:
        sys.exit(f"the good run failed (exit {outcome.exit_code}):\n{outcome.stderr[-3000:]}")
    return good


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a table a reviewer can paste into a PR (messages shortened; the JSON has them whole)."""

    def cell(text: str, width: int = 150) -> str:
        text = text.replace("|", "\\|")
        return text if len(text) <= width else text[: width - 1] + "…"

    lines = [
        "| # | case | exit (want) | traceback | nothing lost | ok | message |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, start=1):
        lost = {None: "", True: "yes", False: "**NO**"}[row["nothing_lost"]]
        lines.append(
            f"| {number} | {cell(row['case'], 70)} | {row['exit_code']} ({row['expected_exit']}) | "
            f"{'**yes**' if row['traceback'] else 'no'} | {lost} | {'ok' if row['ok'] else '**FAIL**'} | "
            f"{cell(row['message'])} |"
        )
    return "\n".join(lines)


def failures(rows: list[dict[str, Any]]) -> str:
    """What went wrong in each failed case, in words: the table says only that it failed."""
    lines = [f"- {row['case']}: {'; '.join(row['problems'])}" for row in rows if not row["ok"]]
    return "\nNot ok:\n" + "\n".join(lines) if lines else ""


def default_cli() -> Path:
    """The console script installed beside this interpreter, else the project's usual venv."""
    beside = Path(sys.executable).parent / "kdcompress"
    if beside.is_file():
        return beside
    found = shutil.which("kdcompress")
    return Path(found) if found else Path.home() / ".cache/kdcompress/venv/bin/kdcompress"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/bad_inputs.json")
    parser.add_argument("--cli", type=Path, default=default_cli(), help="the kdcompress console script")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders for a look")
    args = parser.parse_args()
    sweep_dir = Path(tempfile.mkdtemp(prefix="kdcompress-bad-inputs-"))
    rows: list[dict[str, Any]] = []
    stuck: list[Path] = []
    try:
        good = make_good_run(args.cli, sweep_dir)
        for case in all_cases(args.cli):
            if args.only.lower() in case.name.lower():
                rows.append(run_case(case, args.cli, good, sweep_dir))
                row = rows[-1]
                print(f"{'ok  ' if row['ok'] else 'FAIL'} {row['seconds']:6.1f}s  {case.name}", flush=True)
    finally:
        stuck = unmount_all()
        if stuck:
            print(f"could not unmount {', '.join(map(str, stuck))}", file=sys.stderr)
        if not args.keep and not stuck:
            shutil.rmtree(sweep_dir, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print()
    print(markdown_table(rows))
    print(failures(rows))
    good_rows = sum(row["ok"] for row in rows)
    print(f"\n{good_rows} of {len(rows)} bad inputs: exit 2, one sentence, no traceback, nothing lost")


if __name__ == "__main__":
    main()
