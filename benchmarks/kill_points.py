"""Kill -9 at every checkpoint write of a small run, resume each, and check the weights are identical.

The test suite kills at five chosen moments (``tests/test_real_life.py``); this sweep tries every one:
a 3-epoch digits run is killed by the ``KDCOMPRESS_KILL_AT_WRITE`` hook inside its N-th atomic write
(after the temporary file is complete, before the rename) for every N the run has, then resumed with
``--resume`` semantics, and its final weights are compared with an uninterrupted run's, bit for bit.
Then the one-writer lock: a longer run is killed (SIGKILL) after its first epoch while it holds its
folder's lock; the lock must be free at once (the kernel drops it with the process) and ``--resume``
must finish the run, again bit-identical to an uninterrupted run.

The JSON holds ``{"kill_points": [one row per write], "lock_holder_killed": {...}}``.

Usage: python benchmarks/kill_points.py [--json benchmarks/results/kill_points.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kdcompress import checkpoint  # noqa: E402
from kdcompress.recipe import validate_recipe  # noqa: E402
from kdcompress.run_lock import holder  # noqa: E402
from kdcompress.train import engine  # noqa: E402
from tests.conftest import tiny_recipe  # noqa: E402

SCRIPT = (
    f"import sys; from pathlib import Path; sys.path.insert(0, {str(ROOT)!r});"
    "from tests.conftest import tiny_recipe; from kdcompress.recipe import validate_recipe;"
    "from kdcompress.train import engine;"
    "engine.run(validate_recipe(tiny_recipe(train={'epochs': int(sys.argv[2])})), Path(sys.argv[1]),"
    " quiet=True)"
)


def lock_holder_killed(work: Path, epochs: int = 8) -> dict:
    """Kill -9 a run that holds its folder's lock, right after its first checkpoint; then resume it."""
    recipe = validate_recipe(tiny_recipe(train={"epochs": epochs}))
    engine.run(recipe, work / "lock-full", quiet=True)
    folder = work / "lock-killed"
    process = subprocess.Popen([sys.executable, "-c", SCRIPT, str(folder), str(epochs)])
    while not (folder / "last" / "state.pt").is_file() and process.poll() is None:
        time.sleep(0.02)
    held_while_running = holder(folder) is not None and holder(folder).pid == process.pid
    process.send_signal(signal.SIGKILL)
    killed = process.wait() == -signal.SIGKILL
    freed = holder(folder) is None
    epochs_before = len((folder / "metrics.jsonl").read_text().splitlines())
    engine.run(recipe, folder, resume=True, quiet=True)
    full = checkpoint.load_tensors(work / "lock-full" / "last" / "student.safetensors")
    resumed = checkpoint.load_tensors(folder / "last" / "student.safetensors")
    return {
        "case": "kill -9 of the lock holder after its first checkpoint, then --resume",
        "held_while_running": held_while_running,
        "killed": killed,
        "epochs_kept": epochs_before,
        "lock_free_after_kill": freed,
        "identical": all(torch.equal(full[k], resumed[k]) for k in full),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/kill_points.json")
    args = parser.parse_args()
    recipe = validate_recipe(tiny_recipe(train={"epochs": 3}))
    work = Path(tempfile.mkdtemp(prefix="kdcompress-kill-"))
    names: list[str] = []
    original = checkpoint._fault_point
    checkpoint._fault_point = lambda: names.append(sys._getframe(1).f_locals["path"].name)
    engine.run(recipe, work / "full", quiet=True)
    checkpoint._fault_point = original
    full = checkpoint.load_tensors(work / "full" / "last" / "student.safetensors")
    rows = []
    for point, name in enumerate(names, start=1):
        folder = work / f"kill{point}"
        env = {**os.environ, checkpoint.KILL_AT_WRITE_ENV: str(point)}
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(folder), "3"], env=env, capture_output=True)
        killed = done.returncode == -signal.SIGKILL
        engine.run(recipe, folder, resume=True, quiet=True)
        resumed = checkpoint.load_tensors(folder / "last" / "student.safetensors")
        identical = all(torch.equal(full[k], resumed[k]) for k in full)
        leftovers = [
            p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != checkpoint.LOCK_FILE
        ]
        rows.append(
            {"write": point, "file": name, "killed": killed, "identical": identical, "leftovers": leftovers}
        )
        print(rows[-1], flush=True)
    lock = lock_holder_killed(work)
    print(lock, flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"kill_points": rows, "lock_holder_killed": lock}, indent=2) + "\n")
    good = sum(r["killed"] and r["identical"] and not r["leftovers"] for r in rows)
    print(f"{good} of {len(rows)} kill points resumed bit-identically with no leftovers")
    lock_ok = all(lock[k] for k in ("held_while_running", "killed", "lock_free_after_kill", "identical"))
    print(f"lock holder killed: {'lock freed, resumed bit-identically' if lock_ok else 'FAILED'}")


if __name__ == "__main__":
    main()
