"""A comparison as a cluster job array: ``jobs.txt`` (one command per pending run) and a SLURM script.

``compare --dry-run`` writes both into the comparison folder; ``compare --launch slurm`` also submits the
script with ``sbatch``. Task ``i`` of the array runs line ``i + 1`` of ``jobs.txt``; a later plain
``compare`` collects what the tasks wrote (and trains or resumes anything they left). The run-folder
lock keeps two tasks, or a task and a local ``compare``, from writing one run folder.

The script is plain bash: with ``SLURM_ARRAY_TASK_ID`` set it runs anywhere (that is how it is tested),
and ``KDCOMPRESS`` (default: the interpreter that wrote the script, ``-m kdcompress``) says how to start
kdcompress on the nodes.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from kdcompress import checkpoint
from kdcompress.errors import UserError

JOBS_FILE = "jobs.txt"
SBATCH_FILE = "compare.sbatch"


@dataclass(frozen=True)
class SlurmOptions:
    """What the array script asks SLURM for, per task."""

    partition: str | None = None
    gpus: int | None = None
    cpus: int | None = None
    time: str | None = None
    extra: tuple[str, ...] = ()  # further #SBATCH lines, e.g. "--account=vision" or "--mem=32G"
    setup: tuple[str, ...] = ()  # shell lines before the run, e.g. "module load cuda"


def _script(out: Path, count: int, options: SlurmOptions) -> str:
    jobs = (out / JOBS_FILE).resolve()
    logs = (out / "slurm").resolve()
    lines = [
        "#!/usr/bin/env bash",
        "# A kdcompress compare sweep: task i runs line i+1 of jobs.txt. Submit with `sbatch` (or",
        "# `kdcompress compare ... --launch slurm`); run `kdcompress compare` with the same flags afterwards",
        "# to collect the leaderboard.",
        "#SBATCH --job-name=kdcompress-compare",
        f"#SBATCH --array=0-{count - 1}",
        f"#SBATCH --output={logs}/%A_%a.out",
    ]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.gpus:
        lines.append(f"#SBATCH --gres=gpu:{options.gpus}")
    if options.cpus:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus}")
    if options.time:
        lines.append(f"#SBATCH --time={options.time}")
    lines += [f"#SBATCH {line.strip()}" for line in options.extra if line.strip()]
    default = shlex.join([sys.executable, "-m", "kdcompress"])
    lines += [
        "set -euo pipefail",
        *options.setup,
        f'KDCOMPRESS="${{KDCOMPRESS:-{default}}}"',
        f"JOBS={shlex.quote(str(jobs))}",
        ': "${SLURM_ARRAY_TASK_ID:?set by SLURM for each task of the array}"',
        'line="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$JOBS")"',
        'if [ -z "$line" ]; then echo "jobs.txt has no line for task $SLURM_ARRAY_TASK_ID" >&2; exit 2; fi',
        'echo "task $SLURM_ARRAY_TASK_ID: $line"',
        'eval "$KDCOMPRESS ${line#kdcompress }"',
    ]
    return "\n".join(lines) + "\n"


def write_job_files(out: Path, commands: list[str], options: SlurmOptions) -> dict[str, Path]:
    """``jobs.txt`` always (empty when nothing is pending), the SLURM array script when there are jobs."""
    files = {"jobs": out / JOBS_FILE}
    checkpoint.write_text(files["jobs"], "".join(line + "\n" for line in commands))
    script = out / SBATCH_FILE
    if commands:
        checkpoint.write_text(script, _script(out, len(commands), options))
        script.chmod(0o755)
        files["sbatch"] = script
    elif script.exists():
        script.unlink()  # nothing pending: an old script would rerun finished work
    return files


def submit(script: Path) -> str:
    """``sbatch --parsable script``; the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            f"sbatch is not on the PATH, so the sweep cannot be submitted from here; submit {script} from a "
            "SLURM login node (`sbatch FILE`), or run the lines of jobs.txt with any scheduler."
        )
    (script.parent / "slurm").mkdir(exist_ok=True)
    done = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"sbatch refused {script}: {reason[-1] if reason else f'exit {done.returncode}'}.")
    return done.stdout.strip().split(";")[0]
