"""One writer per run folder: an OS file lock that the kernel releases when its process dies.

Two commands aimed at one folder (a requeued cluster job, a command pasted twice, two array tasks with
one ``--out``, a ``--resume`` of a run that is still training) would both write it, and the folder would
then describe neither run. So every command that writes a run or comparison folder first takes an
exclusive lock on ``<folder>/.lock`` (``flock``; ``msvcrt.locking`` on Windows). A second writer is
refused with one sentence naming the live process (pid, host, start time, command). The lock lives as
long as the process: a kill -9 never leaves a stale lock, since the kernel drops it with the process,
and the next command simply takes it. On network file systems Linux maps ``flock`` onto POSIX byte-range
locks, which NFS servers honour, so array tasks on shared storage are protected too.

Readers (``eval``, ``export``, ``bench``) never take the lock; :func:`holder` tells them whether a live
process is writing the folder, so they can say they read its last completed checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from kdcompress.checkpoint import LOCK_FILE, make_folder
from kdcompress.errors import UserError

#: Folders this process holds the lock of: asked about them, :func:`holder` answers without touching the
#: lock file (on NFS, closing any descriptor of a POSIX-locked file drops the process's lock).
_HELD: dict[Path, Holder] = {}


@dataclass(frozen=True)
class Holder:
    """The process that holds a folder's lock, as it recorded itself."""

    pid: int | None
    host: str | None
    started: float | None
    command: str | None

    def describe(self) -> str:
        """``process 4121 on node07 since 2026-12-02 18:04:55 (kdcompress train ...)``."""
        if self.pid is None:
            return "another process (it has not recorded itself yet)"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        command = self.command or ""
        what = f" ({command[:57]}...)" if len(command) > 60 else f" ({command})" if command else ""
        return f"process {self.pid} on {self.host} since {since}{what}"


def _try_lock(handle: IO[Any]) -> bool:
    """Take the exclusive lock without waiting; False when another process holds it."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_holder(path: Path) -> Holder:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    return Holder(record.get("pid"), record.get("host"), record.get("started"), record.get("command"))


def _wait_for_holder(path: Path, patience: float = 2.0) -> Holder:
    """The holder's record, waiting briefly for it: a holder writes its record just after taking the
    lock, so a command started at the same moment can find the lock taken and the record still empty
    (seen on a loaded machine). Two seconds covers that gap; a record still missing after them is
    reported as unknown rather than blocking the refusal."""
    deadline = time.monotonic() + patience
    holder = _read_holder(path)
    while holder.pid is None and time.monotonic() < deadline:
        time.sleep(0.05)
        holder = _read_holder(path)
    return holder


class RunLock:
    """The exclusive lock on one folder, held from :meth:`acquire` until :meth:`release` (or death).

    ``created`` says whether this lock's :meth:`acquire` created the folder, so a run that fails before
    it keeps anything may remove what it created, and nothing else.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.created = False
        self._handle: IO[Any] | None = None

    def acquire(self, what: str = "this command") -> RunLock:
        """Lock the folder (creating it when missing), or raise a UserError naming the live holder."""
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"'{self.folder}' is a file, not a folder; pass a new folder for the run.")
        make_folder(self.folder.parent)
        try:
            self.folder.mkdir()
            self.created = True
        except FileExistsError:
            self.created = False
        except OSError as exc:
            make_folder(self.folder)  # the same error, as the one sentence a user can act on
            raise exc
        try:
            handle = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the lock
        except OSError as exc:
            raise UserError(
                f"Cannot write '{self.path}' ({exc.strerror}); choose a folder you can write to."
            ) from None
        if not _try_lock(handle):
            handle.close()
            holder = _wait_for_holder(self.path)
            raise UserError(
                f"'{self.folder}' is in use: {holder.describe()} is writing it, so {what} would mix two "
                "runs in one folder; wait for it to finish (or stop it), or pass another --out."
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300],
        }
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(record))
            handle.flush()
        except OSError:  # a full disk: the lock holds all the same; the run's own writes will say so
            pass
        self._handle = handle
        _HELD[self.folder.resolve()] = Holder(**record)
        return self

    def release(self) -> None:
        """Drop the lock (closing the file releases it)."""
        if self._handle is not None:
            _HELD.pop(self.folder.resolve(), None)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(folder: Path) -> Holder | None:
    """The live process writing ``folder``, or None when no process holds its lock."""
    mine = _HELD.get(Path(folder).resolve())
    if mine is not None:
        return mine
    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        handle = open(path)  # noqa: SIM115 - closed below
    except OSError:
        return None
    try:
        if _try_lock(handle):
            return None
        return _read_holder(path)
    finally:
        handle.close()  # also releases the probe's own lock when it got one
