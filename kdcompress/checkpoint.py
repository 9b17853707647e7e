"""Files of a run, written so that a crash never leaves a half-written checkpoint behind.

Every file is written to a temporary name in the same folder and then renamed over the old one
(``os.replace`` is atomic on POSIX). The ``last/`` folder, which must stay consistent as a pair of files,
is built as a new folder and swapped in; ``last.old`` is kept only for the instant of the swap, and a
resume falls back to it if the process died exactly then.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kdcompress.errors import DiskFull, UserError

STUDENT_FILE = "student.safetensors"  # the trained model in a run folder
EXPORT_WEIGHTS = "model.safetensors"  # the trained model in an export folder (timm's local-dir name)
WEIGHT_FILES = (STUDENT_FILE, EXPORT_WEIGHTS)
CONFIG_FILE = "config.json"
STATE_FILE = "state.pt"
LAST_DIR = "last"
LOCK_FILE = ".lock"  # the one-writer lock of a run or comparison folder (kdcompress/run_lock.py)


#: Test hook: SIGKILL this process inside its N-th atomic write (after the temporary file is complete,
#: before it is renamed), the worst moment to die. Fault-injection tests use it to kill a run at chosen
#: points instead of by timing luck; it does nothing unless set.
KILL_AT_WRITE_ENV = "KDCOMPRESS_KILL_AT_WRITE"
_writes_done = 0


def _fault_point() -> None:
    global _writes_done
    target = os.environ.get(KILL_AT_WRITE_ENV)
    if target:
        _writes_done += 1
        if _writes_done == int(target):
            os.kill(os.getpid(), signal.SIGKILL)


def _as_user_error(exc: BaseException, path: Path) -> UserError | None:
    """The one-sentence form of a write failure the user can fix (full disk, read-only, no permission)."""
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code == errno.ENOSPC or "No space left" in text:
        return DiskFull(
            f"The disk is full: writing '{path}' failed; free some space and run the command again."
        )
    if code == errno.EROFS or "Read-only file system" in text:
        return UserError(f"Cannot write '{path}': the file system is read-only; choose another --out.")
    if code in (errno.EACCES, errno.EPERM) or "Permission denied" in text:
        return UserError(f"Cannot write '{path}': permission denied; choose a folder you can write to.")
    return None


def make_folder(path: Path) -> None:
    """``mkdir -p`` with the write failures a user can fix as one sentence."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (_as_user_error(exc, path) or exc) from None


def cache_root() -> Path:
    """Where reusable artefacts live (the demo teacher, probe results): $KDCOMPRESS_CACHE, else the
    user cache folder."""
    if "KDCOMPRESS_CACHE" in os.environ:
        return Path(os.environ["KDCOMPRESS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kdcompress"


def _default_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp's 0600 is wrong for shipped files)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The one temp-file-then-rename in the project: every file a user keeps (checkpoints, exports, JSON,
    plots) goes through it, so a crash or a full disk never leaves a half-written file under its name.
    """
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise (_as_user_error(exc, path) or exc) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _default_mode())
        _fault_point()
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        error = _as_user_error(exc, path)
        if error is not None:
            raise error from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def save_tensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # Clone so tensors that share storage (tied weights, views) serialise independently.
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    atomic_write(
        path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    )


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh folder to fill; on success it replaces ``path`` as one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    _fault_point()
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(run_dir: Path) -> int:
    """Delete what killed writes left behind (hidden ``.<name>.XXXX`` files and folders, a stale
    ``last.old`` next to a complete ``last/``); returns the bytes freed. Safe: only rank 0 writes."""
    freed = 0
    for item in run_dir.iterdir() if run_dir.is_dir() else []:
        if not _is_leftover(item):
            continue
        if item.is_dir():
            freed += sum(f.stat().st_size for f in item.rglob("*") if f.is_file())
            shutil.rmtree(item, ignore_errors=True)
        else:
            freed += item.stat().st_size
            item.unlink(missing_ok=True)
    return freed


def _is_leftover(item: Path) -> bool:
    stale_old = item.name == LAST_DIR + ".old" and last_dir(item.parent) == item.parent / LAST_DIR
    return (item.name.startswith(".") and item.name.count(".") >= 2) or stale_old


def holds_only_leftovers(run_dir: Path) -> bool:
    """Whether a folder holds nothing a user keeps: empty, only its lock file, or only what killed writes
    left behind (a run killed inside its very first write, before its recipe.yaml existed)."""
    return run_dir.is_dir() and all(
        _is_leftover(item) or item.name == LOCK_FILE for item in run_dir.iterdir()
    )


def last_dir(run_dir: Path) -> Path | None:
    """The newest complete ``last/`` folder of a run, if any."""
    for name in (LAST_DIR, LAST_DIR + ".old"):
        candidate = run_dir / name
        if (candidate / STATE_FILE).is_file() and (candidate / STUDENT_FILE).is_file():
            return candidate
    return None


def model_config(
    *,
    arch: str,
    num_classes: int,
    in_chans: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float = 1.0,
    interpolation: str = "bilinear",
    model_kwargs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A timm-style ``config.json``: enough to rebuild the model and its preprocessing with timm alone."""
    return {
        "architecture": arch,
        "num_classes": num_classes,
        "model_args": {"in_chans": in_chans, **(model_kwargs or {})},
        "pretrained_cfg": {
            "input_size": [in_chans, image_size, image_size],
            "mean": list(mean),
            "std": list(std),
            "num_classes": num_classes,
            "interpolation": interpolation,
            "crop_pct": crop_pct,
        },
        "kdcompress": extra or {},
    }


def save_model_folder(
    folder: Path, model: nn.Module, config: dict[str, Any], filename: str = STUDENT_FILE
) -> None:
    """Weights as safetensors plus ``config.json`` (weights first: the config describes them)."""
    save_tensors(folder / filename, model.state_dict(), {"architecture": config["architecture"]})
    write_json(folder / CONFIG_FILE, config)


def read_config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / CONFIG_FILE).read_text())


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
