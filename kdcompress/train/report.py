"""``report.md`` (and ``curves.png`` next to it): what a run did and how well, readable without any tool.

The report holds the recipe in brief, teacher vs student accuracy, the compression the student buys
(parameters, FLOPs per image, CPU latency at batch 1), the paper's number when the recipe carries one,
the method's own facts (e.g. the layers a feature method aligned), the per-epoch table and the
training curves. FLOPs and latency are measured on freshly built copies of the two architectures (the
weights do not change either), with a few timed calls only, so writing the report takes about a second
for small models. Latency is single-threaded: comparable across machines and unaffected by
whatever else the host is running.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from kdcompress import checkpoint
from kdcompress.data.spec import InputSpec
from kdcompress.formatting import ratio, si
from kdcompress.models.cost import count_flops, torch_latency
from kdcompress.models.factory import build_model
from kdcompress.plotting import plot_training_curves
from kdcompress.recipe import Recipe
from kdcompress.train.result import RunResult

CURVES_FILE = "curves.png"
LATENCY_BUDGET_S = 0.3  # per model: the timed calls stop after about this long (at least 3 calls)


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ---- measurements --------------------------------------------------------------------------------------


def _quick_latency_ms(model: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Median batch latency from a handful of calls, bounded by LATENCY_BUDGET_S."""
    model.eval()
    with torch.inference_mode():
        start = time.perf_counter()
        model(inputs)  # warm-up, and a first estimate of the cost
        first = time.perf_counter() - start
    repeats = int(min(10, max(3, LATENCY_BUDGET_S / max(first, 1e-6))))
    return torch_latency(model, inputs, warmup=1, repeats=repeats).median_ms


def measure_models(recipe: Recipe, config: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """FLOPs per image and CPU latency at batch 1 for the student and (when there is one) the teacher."""
    input_size = tuple(int(v) for v in config["pretrained_cfg"]["input_size"])
    num_classes = int(config["num_classes"])
    # The resolved architectures (``resnet18`` for ``resnet18.a1_in1k`` or an hf-hub repo): random copies
    # cost the same FLOPs and time, and building them needs no weights.
    roles = {"student": (config["architecture"], recipe.student.kwargs)}
    if recipe.teacher is not None:
        roles["teacher"] = (config["kdcompress"].get("teacher") or recipe.teacher.arch, recipe.teacher.kwargs)
    out: dict[str, dict[str, float | None]] = {}
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(1, *input_size, generator=gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # single-thread latency: comparable across machines and busy hosts
    try:
        for role, (arch, kwargs) in roles.items():
            model = build_model(arch, num_classes, input_size[0], **kwargs).eval()
            out[role] = {
                "flops": float(count_flops(model, input_size)),  # type: ignore[arg-type]
                "latency_ms": _quick_latency_ms(model, inputs),
            }
    finally:
        torch.set_num_threads(threads)
    return out


# ---- the report ----------------------------------------------------------------------------------------


def _fact(value: Any) -> str:
    if isinstance(value, str | int | float | bool) or value is None:
        return str(value)
    return "`" + json.dumps(value) + "`"


def _input_fact(record: dict[str, Any]) -> str:
    """``mean (0.5, 0.5, 0.5), std (...), bicubic, crop 0.875, from timm's pretrained_cfg of ...``."""
    spec = InputSpec(
        tuple(record["mean"]), tuple(record["std"]), record.get("interpolation"), record.get("crop_pct")
    )
    return f"{spec.describe()}; from {record.get('origin') or 'the recipe'}"


def _recipe_summary(recipe: Recipe, config: dict[str, Any] | None) -> list[str]:
    options = recipe.method_options()
    method = recipe.method.name + (
        " (" + ", ".join(f"{k}={_fact(v)}" for k, v in options.items()) + ")" if options else ""
    )
    data = recipe.data.source
    if config is not None:
        c, h, w = config["pretrained_cfg"]["input_size"]
        data += f", {c}x{h}x{w} inputs"
    limits = [
        f"{k}={v}" for k, v in (("train", recipe.data.train_limit), ("val", recipe.data.val_limit)) if v
    ]
    if limits:
        data += f" (limited: {', '.join(limits)})"
    origins = (config or {}).get("kdcompress", {}).get("weights", {})
    teacher = "none"
    if recipe.teacher is not None:
        teacher = recipe.teacher.arch + (f": {origins['teacher']}" if origins.get("teacher") else "")
    student = recipe.student.arch + (f": {origins['student']}" if origins.get("student") else "")
    optim, schedule, train = recipe.optim, recipe.schedule, recipe.train
    inputs = (config or {}).get("kdcompress", {}).get("inputs", {})
    rows = [
        ("student", student),
        ("teacher", teacher),
        ("method", method),
        ("data", data),
        *((f"{role} input", _input_fact(spec)) for role, spec in inputs.items()),
        (
            "training",
            f"{train.epochs} epochs, batch {train.batch_size}, precision {train.precision}, "
            f"seed {train.seed}",
        ),
        (
            "optimizer",
            f"{optim.name}, lr {optim.lr:g}, weight decay {optim.weight_decay:g}, {schedule.name} schedule"
            + (f", backbone lr x{optim.backbone_lr_scale:g}" if optim.backbone_lr_scale != 1 else "")
            + (
                f", backbone frozen for {optim.freeze_backbone_epochs} epochs"
                if optim.freeze_backbone_epochs
                else ""
            ),
        ),
    ]
    return ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]


def write_report(result: RunResult, recipe: Recipe, method_facts: dict[str, Any]) -> None:
    """Write the run's markdown report and ``curves.png`` (atomically, like every run file)."""
    run_dir = Path(result.run_dir)
    config_file = run_dir / checkpoint.CONFIG_FILE
    config = checkpoint.read_config(run_dir) if config_file.is_file() else None
    measured: dict[str, dict[str, float | None]] = {}
    measure_note = ""
    if config is not None:
        try:
            measured = measure_models(recipe, config)
        except Exception as exc:  # an exotic op must not cost the user the report of a finished run
            measure_note = f"FLOPs and latency could not be measured ({type(exc).__name__}: {exc})."
    student, teacher = measured.get("student", {}), measured.get("teacher", {})
    has_teacher = recipe.teacher is not None
    title = f"# kdcompress run: {recipe.student.arch} ({recipe.method.name}"
    lines = [title + (f" from {recipe.teacher.arch})" if has_teacher else ")"), ""]
    lines += ["## Recipe", "", *_recipe_summary(recipe, config), ""]

    lines += [
        "## Results",
        "",
        "| | architecture | parameters | FLOPs / image | CPU latency, batch 1 (ms) | val top-1 (%) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    if has_teacher:
        lines.append(
            f"| teacher | {recipe.teacher.arch} | {si(result.teacher_params)} | {si(teacher.get('flops'))} "
            f"| {_fmt(teacher.get('latency_ms'))} | {_fmt(result.teacher_top1)} |"
        )
    lines.append(
        f"| student (best, epoch {result.best_epoch}) | {recipe.student.arch} | {si(result.student_params)} "
        f"| {si(student.get('flops'))} | {_fmt(student.get('latency_ms'))} | {_fmt(result.best_top1)} |"
    )
    if has_teacher:
        params_x = ratio(result.teacher_params, result.student_params)
        flops_x = ratio(teacher.get("flops"), student.get("flops"))
        speed_x = ratio(teacher.get("latency_ms"), student.get("latency_ms"))
        delta = None if result.teacher_top1 is None else result.best_top1 - result.teacher_top1
        lines.append(
            f"| teacher / student | | {_fmt(params_x, 1)}x | {_fmt(flops_x, 1)}x "
            f"| {_fmt(speed_x, 1)}x faster | {'n/a' if delta is None else f'{delta:+.2f} points'} |"
        )
    lines.append("")
    summary = f"Last epoch val top-1: {_fmt(result.last_top1)}%."
    if has_teacher and result.teacher_params and result.student_params:
        summary = (
            f"The student has {result.teacher_params / result.student_params:.1f}x fewer parameters than the "
            f"teacher. " + summary
        )
    lines.append(summary)
    lines.append(
        "FLOPs: one forward pass of one image (a multiply-add is 2 FLOPs). Latency: PyTorch fp32 eager, "
        "one CPU thread, median of a few calls on a random image; `kdcompress bench` measures carefully."
    )
    if measure_note:
        lines.append(measure_note)

    if recipe.paper and recipe.paper.top1 is not None:
        paper = recipe.paper
        where = f" on {paper.dataset}" if paper.dataset else ""
        if paper.measured_on(recipe.data.source):
            gap = result.best_top1 - paper.top1
            comparison = f"this run {result.best_top1:.2f}% ({gap:+.2f} points)."
        else:
            comparison = f"not compared: this run trained on {recipe.data.source}, another dataset."
        lines += ["", f"Paper: {paper.top1:.2f}%{where} ({paper.source or 'source not given'}); {comparison}"]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in result.notes]
    if method_facts:
        lines += ["", "## Method", ""] + [f"- {k}: {_fact(v)}" for k, v in method_facts.items()]

    paper_top1 = recipe.paper.top1 if recipe.paper and recipe.paper.measured_on(recipe.data.source) else None
    if plot_training_curves(result.history, run_dir / CURVES_FILE, result.teacher_top1, paper_top1):
        lines += ["", "## Training curves", "", f"![loss terms and top-1 per epoch]({CURVES_FILE})"]
    lines += [
        "",
        "## Epochs",
        "",
        "| epoch | loss | train top-1 | val top-1 | img/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result.history:
        lines.append(
            f"| {row['epoch']} | {row['loss']:.4f} | {row['train_top1']:.2f} | {row['val_top1']:.2f} "
            f"| {row['images_per_second']:.0f} |"
        )
    lines += ["", "## Full recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    checkpoint.write_text(run_dir / "report.md", "\n".join(lines))
