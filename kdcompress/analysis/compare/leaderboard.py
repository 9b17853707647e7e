"""The leaderboard of a comparison: one row per (student, method) over its seeds, read from run folders.

What makes it trustworthy:

- **The strongest baseline, per student.** Each method's gain is reported over its own recipe family's
  ``ce`` and over the best ``ce`` of that student, so a weak baseline cannot make a method look good.
- **Significance.** A gain is marked when it exceeds twice the larger seed standard deviation of the
  method and that best ``ce``.
- **Deployment.** When the comparison is about shipping (``--students`` / ``--deploy``), each row
  carries the student's deployment cost, the top-1 of the deployed file beside the best fp32 top-1, and
  whether it lies on the Pareto front of deployed top-1 against latency (no other row is at least as
  fast and at least as accurate, and better in one).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcompress import checkpoint
from kdcompress.analysis.compare.deployment import StudentCost
from kdcompress.analysis.compare.plan import BASELINES, PlannedRun, budget, read_rows


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation over seeds (0 for one seed, ``None`` for none), the one
    summary every leaderboard and benchmark table reports."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Row:
    """One (student, method) over its seeds."""

    student: str
    method: str
    family: str
    seeds: list[int] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    deployed: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        best_mean, best_std = mean_std(self.best)
        last_mean, last_std = mean_std(self.last)
        deployed_mean, deployed_std = mean_std(self.deployed)
        return {
            "student": self.student,
            "method": self.method,
            "family": self.family,
            "seeds": self.seeds,
            "best_top1_mean": best_mean,
            "best_top1_std": best_std,
            "last_top1_mean": last_mean,
            "last_top1_std": last_std,
            "deployed_top1_mean": deployed_mean,
            "deployed_top1_std": deployed_std,
            "epoch_seconds": statistics.fmean(self.epoch_seconds) if self.epoch_seconds else None,
            "images_per_second": statistics.fmean(self.images_per_second) if self.images_per_second else None,
            "errors": self.errors,
        }


def _gain(row: dict[str, Any], baseline: dict[str, Any] | None) -> float | None:
    if baseline is None or row["best_top1_mean"] is None or baseline["best_top1_mean"] is None:
        return None
    return row["best_top1_mean"] - baseline["best_top1_mean"]


def _score(rows: list[dict[str, Any]]) -> str | None:
    """Gains over the student's own-family and best ``ce``; returns the best ``ce``'s name."""
    baselines = {s["family"]: s for s in rows if s["method"] in BASELINES.values()}
    scored = [s for s in baselines.values() if s["best_top1_mean"] is not None]
    strongest = max(scored, key=lambda s: s["best_top1_mean"], default=None)
    for s in rows:
        s["gain_vs_own_ce"] = _gain(s, baselines.get(s["family"]))
        s["gain_vs_best_ce"] = _gain(s, strongest)
        spread = max(s["best_top1_std"] or 0.0, (strongest or {}).get("best_top1_std") or 0.0)
        gain = s["gain_vs_best_ce"]
        s["significant"] = bool(gain is not None and len(s["seeds"]) > 1 and gain > 2 * spread)
    return strongest["method"] if strongest else None


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points: which are not dominated (another point at least as fast and as
    accurate, and strictly better in one)."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            o_lat <= lat and o_acc >= acc and (o_lat < lat or o_acc > acc)
            for j, (o_lat, o_acc) in enumerate(points)
            if j != i
        )
        front.append(not dominated)
    return front


def collect(
    runs: list[PlannedRun],
    errors: dict[Path, str] | None = None,
    costs: dict[str, StudentCost] | None = None,
    deployed: dict[Path, float] | None = None,
) -> dict[str, Any]:
    """The leaderboard document (``leaderboard.json``) from the run folders, wherever they ran."""
    rows: dict[tuple[str, str], Row] = {}
    teacher_top1 = None
    params: dict[str, int] = {}
    for run in runs:
        row = rows.setdefault((run.student, run.method), Row(run.student, run.method, run.family))
        if errors and run.folder in errors:
            row.errors.append(f"seed {run.seed}: {errors[run.folder]}")
            continue
        if run.status() != "done":
            continue
        history = read_rows(run.folder)
        row.seeds.append(run.seed)
        row.best.append(max(r["val_top1"] for r in history))
        row.last.append(history[-1]["val_top1"])
        row.epoch_seconds.append(statistics.fmean(r["epoch_seconds"] for r in history))
        row.images_per_second.append(statistics.fmean(r["images_per_second"] for r in history))
        if deployed and run.folder in deployed:
            row.deployed.append(deployed[run.folder])
        config = checkpoint.read_config(run.folder)
        teacher_top1 = config.get("kdcompress", {}).get("teacher_val_top1") or teacher_top1
        if run.student not in params:
            params[run.student] = _student_params(run.folder)
    summaries = [row.summary() for row in rows.values()]
    request = runs[0].request if runs else None
    students = list(request.students) if request else []
    best_ce: dict[str, str | None] = {}
    for student in students:
        best_ce[student] = _score([s for s in summaries if s["student"] == student])
    student_rows = []
    for student in students:
        cost = (costs or {}).get(student)
        entry = {"arch": student, "params": params.get(student), "best_ce": best_ce.get(student)}
        if cost is not None:
            entry |= {"deploy": cost.to_dict(), "excluded": cost.excluded}
        student_rows.append(entry)
    if costs:
        _mark_front(summaries, costs)
    return {
        "budget": budget(request) if request else {},
        "teacher": {"arch": request.teacher if request else None, "top1": teacher_top1},
        "student": {
            "arch": students[0] if students else None,
            "params": params.get(students[0]) if students else None,
        },
        "students": student_rows,
        "best_ce": best_ce.get(students[0]) if len(students) == 1 else best_ce,
        "deploy": None
        if costs is None or request is None or request.deploy is None
        else {
            "precision": request.deploy.precision,
            "batch": request.deploy.batch,
        },
        "rows": summaries,
    }


def _mark_front(summaries: list[dict[str, Any]], costs: dict[str, StudentCost]) -> None:
    """Add each row's latency, size and parameters, and whether it is on the deployed Pareto front."""
    placed = []
    for s in summaries:
        cost = costs.get(s["student"])
        s["latency_ms"] = cost.latency_ms if cost else None
        s["file_mb"] = cost.file_mb if cost else None
        s["params"] = cost.params if cost else None
        accuracy = s["deployed_top1_mean"] if s["deployed_top1_mean"] is not None else s["best_top1_mean"]
        s["on_front"] = False
        if cost is not None and accuracy is not None:
            placed.append((s, (cost.latency_ms, accuracy)))
    for (s, _), front in zip(placed, pareto_front([p for _, p in placed]), strict=True):
        s["on_front"] = front


def _student_params(folder: Path) -> int | None:
    from kdcompress.deploy.trained import load_trained

    return sum(p.numel() for p in load_trained(folder).model.parameters())


# ---- text ---------------------------------------------------------------------------------------------


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if not std else f"{mean:.2f} ± {std:.2f}"


def _signed(value: float | None, mark: bool = False) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.2f}" + (" *" if mark else "")


def headers(board: dict[str, Any]) -> list[str]:
    """The table's columns: students and deployment columns only when the comparison has them."""
    cols = [
        "method",
        "recipe",
        "seeds",
        "best top-1",
        "last top-1",
        "vs own ce",
        "vs best ce",
        "s / epoch",
        "img/s",
    ]
    if len(board.get("students", [])) > 1:
        cols.insert(0, "student")
    if board.get("deploy"):
        precision = board["deploy"]["precision"]
        cols[cols.index("last top-1")] = f"top-1 {precision}"
        cols[cols.index("s / epoch") : cols.index("s / epoch") + 2] = ["latency ms", "MB", "params", "front"]
    return cols


def table_rows(board: dict[str, Any]) -> list[list[str]]:
    """The leaderboard as text cells (the shared source of the table and the markdown): students in the
    order given, within each the best method first."""
    order = {s["arch"]: i for i, s in enumerate(board.get("students", []))}
    ordered = sorted(
        board["rows"], key=lambda s: (order.get(s["student"], 0), -(s["best_top1_mean"] or -1.0))
    )
    cols = headers(board)
    cells = []
    for s in ordered:
        value = {
            "student": s["student"],
            "method": s["method"],
            "recipe": s["family"],
            "seeds": str(len(s["seeds"])),
            "best top-1": _fmt(s["best_top1_mean"], s["best_top1_std"]),
            "last top-1": _fmt(s["last_top1_mean"], s["last_top1_std"]),
            "vs own ce": _signed(s["gain_vs_own_ce"]),
            "vs best ce": _signed(s["gain_vs_best_ce"], s["significant"]),
            "s / epoch": "-" if s["epoch_seconds"] is None else f"{s['epoch_seconds']:.1f}",
            "img/s": "-" if s["images_per_second"] is None else f"{s['images_per_second']:.0f}",
            "latency ms": "-" if s.get("latency_ms") is None else f"{s['latency_ms']:.2f}",
            "MB": "-" if s.get("file_mb") is None else f"{s['file_mb']:.2f}",
            "params": "-" if s.get("params") is None else f"{s['params']:,}",
            "front": "◆" if s.get("on_front") else "",
        }
        if board.get("deploy"):
            value[f"top-1 {board['deploy']['precision']}"] = _fmt(
                s["deployed_top1_mean"], s["deployed_top1_std"]
            )
        cells.append([value[c] for c in cols])
    return cells


def markdown(board: dict[str, Any]) -> str:
    teacher = board["teacher"]
    students = board.get("students", [])
    names = ", ".join(s["arch"] for s in students)
    lines = [
        f"# Comparison: {teacher['arch']} -> {names} on {board['budget'].get('data')}",
        "",
        f"Teacher top-1: {teacher['top1']:.2f}%." if teacher["top1"] is not None else "Teacher top-1: n/a.",
    ]
    for s in students:
        params = f"{s['params']:,} parameters" if s.get("params") else "not trained"
        lines.append(f"- `{s['arch']}`: {params}; strongest baseline `{s['best_ce']}`.")
        if s.get("excluded"):
            lines[-1] = f"- `{s['arch']}`: left out before training: {s['excluded']}."
    if board.get("deploy"):
        deploy = board["deploy"]
        lines.append(
            f"Deployed: {deploy['precision']} ONNX at batch {deploy['batch']}; ◆ marks the Pareto front of "
            "deployed top-1 against latency."
        )
    lines += [
        "`*`: gain over the student's strongest baseline above twice the larger seed std.",
        "",
        "| " + " | ".join(headers(board)) + " |",
        "|"
        + "|".join("---" if h in ("student", "method", "recipe", "front") else "---:" for h in headers(board))
        + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(board)]
    errors = [f"- {s['student']} {s['method']} {e}" for s in board["rows"] for e in s["errors"]]
    if errors:
        lines += ["", "Runs that failed:", "", *errors]
    return "\n".join(lines) + "\n"


def write_leaderboard(board: dict[str, Any], out: Path) -> dict[str, Path]:
    """``leaderboard.json`` / ``.md`` / ``.png`` in ``out``, and ``frontier.png`` when deployment counts."""
    from kdcompress.plotting import plot_frontier, plot_leaderboard

    files = {"json": out / "leaderboard.json", "md": out / "leaderboard.md", "png": out / "leaderboard.png"}
    checkpoint.write_json(files["json"], board)
    checkpoint.write_text(files["md"], markdown(board))
    plot_leaderboard(board, files["png"])
    if board.get("deploy"):
        files["frontier"] = out / "frontier.png"
        plot_frontier(board, files["frontier"])
    return files
