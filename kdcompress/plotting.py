"""Every figure the toolkit draws: training curves (report), layer quality (probe), leaderboards and the
deployment frontier (compare).

All of them use matplotlib's object API (``matplotlib.figure.Figure`` with the Agg canvas): no pyplot
state, no display, safe in threads and on headless machines. Files are written atomically like every
other run file, in the format the path's suffix names (PNG, SVG or PDF).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdcompress import checkpoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from kdcompress.probe.layers import ProbeResult


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # deferred: matplotlib costs ~0.5 s to import

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    """Render ``fig`` in the format of ``path``'s suffix and write it atomically."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    checkpoint.write_bytes(path, buffer.getvalue())


def plot_training_curves(
    history: list[dict[str, Any]],
    path: Path,
    teacher_top1: float | None = None,
    paper_top1: float | None = None,
) -> bool:
    """Loss terms (left) and train/val top-1 (right) per epoch; False when there is no history."""
    if not history:
        return False
    epochs = [row["epoch"] for row in history]
    fig = _figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    terms = sorted({k for row in history for k in row if k.startswith("loss_")})
    for key in terms:
        loss_ax.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o", label=key[5:])
    if len(terms) != 1:
        loss_ax.plot(epochs, [row["loss"] for row in history], marker="o", color="black", label="total")
    if any("val_loss" in row for row in history):
        values = [row.get("val_loss", float("nan")) for row in history]
        loss_ax.plot(epochs, values, marker="s", linestyle="--", color="grey", label="val CE")
    loss_ax.set(title="training loss (weighted terms)", xlabel="epoch", ylabel="loss")
    loss_ax.legend(fontsize="small")
    loss_ax.grid(alpha=0.3)
    acc_ax.plot(epochs, [row["train_top1"] for row in history], marker="o", label="train top-1")
    acc_ax.plot(epochs, [row["val_top1"] for row in history], marker="o", label="val top-1")
    if teacher_top1 is not None:
        acc_ax.axhline(teacher_top1, linestyle="--", color="tab:red", label=f"teacher {teacher_top1:.2f}%")
    if paper_top1 is not None:
        acc_ax.axhline(paper_top1, linestyle=":", color="tab:purple", label=f"paper {paper_top1:.2f}%")
    acc_ax.set(title="top-1 accuracy", xlabel="epoch", ylabel="%")
    acc_ax.legend(fontsize="small")
    acc_ax.grid(alpha=0.3)
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    save_figure(fig, path)
    return True


def plot_probe(result: ProbeResult, path: Path, title: str) -> None:
    """S, I, E and Q of every probed layer against depth, the chosen layers circled."""
    rows = result.rows
    x = list(range(len(rows)))
    fig = _figure(max(6.0, 0.35 * len(rows) + 2), 4.5)
    ax = fig.subplots()
    for key, label, style in (
        ("separation", "S (separation)", "-o"),
        ("information", "I (information)", "-s"),
        ("efficiency", "E (efficiency)", "-^"),
        ("quality", "Q = S + sqrt(I E)", "-D"),
    ):
        ax.plot(x, [getattr(r, key) for r in rows], style, label=label, markersize=4, linewidth=1.2)
    chosen = [i for i, r in enumerate(rows) if r.chosen]
    ax.scatter(
        chosen,
        [rows[i].quality for i in chosen],
        s=160,
        facecolors="none",
        edgecolors="red",
        linewidths=1.8,
        zorder=5,
        label="chosen",
    )
    for i in chosen:
        ax.axvline(i, color="red", alpha=0.15, linewidth=6)
    step = max(1, len(rows) // 40)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([r.name for r in rows][::step], rotation=70, ha="right", fontsize=7)
    ax.set(xlabel="layer (depth order)", ylabel="score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def plot_leaderboard(board: dict[str, Any], path: Path) -> None:
    """Best top-1 per method (mean, with the seed std as error bars), teacher and best ce as lines."""
    rows = sorted(
        (r for r in board["rows"] if r["best_top1_mean"] is not None), key=lambda r: r["best_top1_mean"]
    )
    fig = _figure(7.5, max(2.5, 0.45 * len(rows) + 1.5))
    ax = fig.subplots()
    names = [r["method"] for r in rows]
    means = [r["best_top1_mean"] for r in rows]
    stds = [r["best_top1_std"] or 0.0 for r in rows]
    colours = ["tab:grey" if r["method"].startswith("ce") else "tab:blue" for r in rows]
    ax.barh(names, means, xerr=stds, color=colours, capsize=3)
    best_ce = next((r for r in rows if r["method"] == board.get("best_ce")), None)
    if best_ce is not None:
        ax.axvline(
            best_ce["best_top1_mean"], color="black", linestyle="--", label=f"best ce ({best_ce['method']})"
        )
    teacher = board.get("teacher", {}).get("top1")
    if teacher is not None:
        ax.axvline(teacher, color="tab:red", linestyle=":", label=f"teacher {teacher:.2f}%")
    if means:
        low = min(m - s for m, s in zip(means, stds, strict=True))
        high = max([m + s for m, s in zip(means, stds, strict=True)] + ([teacher] if teacher else []))
        ax.set_xlim(max(0.0, low - 2), min(100.0, high + 1))
    ax.set(xlabel="best val top-1 (%), mean over seeds", title="kdcompress compare")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    save_figure(fig, path)


def plot_frontier(board: dict[str, Any], path: Path) -> None:
    """Deployed top-1 against deployed latency: one point per (student, method), the seed std as error
    bars, each student's scratch baseline hollow, and the Pareto front drawn through its points."""
    rows = [r for r in board["rows"] if r.get("latency_ms") is not None]
    fig = _figure(8, 5.5)
    ax = fig.subplots()
    students = [s["arch"] for s in board.get("students", [])]
    colours = {name: f"C{i % 10}" for i, name in enumerate(students)}
    for r in rows:
        top1 = r["deployed_top1_mean"] if r["deployed_top1_mean"] is not None else r["best_top1_mean"]
        if top1 is None:
            continue
        spread = r["deployed_top1_std"] if r["deployed_top1_mean"] is not None else r["best_top1_std"]
        baseline = r["method"].startswith("ce")
        ax.errorbar(
            r["latency_ms"],
            top1,
            yerr=spread or 0.0,
            fmt="o",
            color=colours.get(r["student"], "black"),
            mfc="none" if baseline else colours.get(r["student"], "black"),
            capsize=3,
            markersize=7,
        )
    front = sorted(
        (r for r in rows if r.get("on_front")),
        key=lambda r: r["latency_ms"],
    )
    if front:
        xs = [r["latency_ms"] for r in front]
        ys = [
            r["deployed_top1_mean"] if r["deployed_top1_mean"] is not None else r["best_top1_mean"]
            for r in front
        ]
        ax.step(xs, ys, where="post", color="black", linewidth=1, alpha=0.6, label="Pareto front")
        for r, x, y in zip(front, xs, ys, strict=True):
            ax.annotate(
                f"{r['student']}\n{r['method']}",
                (x, y),
                textcoords="offset points",
                xytext=(6, 6),
                fontsize=7,
            )
    for name in students:
        ax.plot([], [], "o", color=colours[name], label=name)
    ax.plot([], [], "o", mfc="none", color="grey", label="ce (scratch)")
    deploy = board.get("deploy") or {}
    ax.set(
        xlabel=f"latency (ms, batch {deploy.get('batch', 1)}, {deploy.get('precision', 'fp32')} onnxruntime)",
        ylabel=f"top-1 (%) of the {deploy.get('precision', 'fp32')} file, mean over seeds",
        title="which student to ship: deployed accuracy against latency",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    save_figure(fig, path, dpi=120)
