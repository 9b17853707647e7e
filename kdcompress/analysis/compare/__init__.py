"""``kdcompress compare``: which student and which method to ship, measured fairly.

A comparison is a set of ordinary runs, one per (student, method, seed), with one budget for all
(data, epochs, batch, image size, seeds): ``plan`` says what runs, ``deployment`` what each student
costs where it ships and what each run scores as the deployed file, ``leaderboard`` turns the run
folders into the leaderboard and the Pareto front, ``runner`` trains what is missing, and ``cluster``
writes the job array that trains it on a cluster instead. docs/cli.md#compare is the user's guide.
"""

from kdcompress.analysis.compare.cluster import SlurmOptions, submit, write_job_files
from kdcompress.analysis.compare.leaderboard import collect, headers, markdown, table_rows, write_leaderboard
from kdcompress.analysis.compare.plan import (
    BASELINES,
    FAMILIES,
    PLAN_FILE,
    CompareRequest,
    DeploySettings,
    PlannedRun,
    budget,
    family_of,
    plan,
    record_budget,
    student_key,
)
from kdcompress.analysis.compare.runner import commands, pending, planned_runs, run_comparison

__all__ = [
    "BASELINES",
    "FAMILIES",
    "PLAN_FILE",
    "CompareRequest",
    "DeploySettings",
    "PlannedRun",
    "SlurmOptions",
    "budget",
    "collect",
    "commands",
    "family_of",
    "headers",
    "markdown",
    "pending",
    "plan",
    "planned_runs",
    "record_budget",
    "run_comparison",
    "student_key",
    "submit",
    "table_rows",
    "write_job_files",
    "write_leaderboard",
]
