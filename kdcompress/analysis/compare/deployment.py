"""Which students can ship: their deployment cost before any training, and each run's deployed accuracy.

Before training, every candidate student is built (its weights do not change what it costs), exported
to ONNX at the deployed precision (int8: static QDQ calibrated on a few training images, as ``export``
does) and measured: onnxruntime latency at the deployed batch on this machine, parameters, FLOPs and the
file's size. A student over a budget (``--max-latency-ms``, ``--max-params``, ``--max-mb``) is left out
before it costs any training. Latency measured on the target device instead (``kdcompress bench
DIR/deploy/*.onnx --json FILE`` run there) replaces the local timing (``--latency-json FILE``). Costs
are kept in ``DIR/deploy/costs.json``, so a re-run judges every student as the first run did.

After training, each finished run is exported at the deployed precision and its top-1 measured with
onnxruntime on the whole validation split (kept in the run folder as ``deployed-<precision>.json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from kdcompress import checkpoint
from kdcompress.analysis.compare.plan import CompareRequest, DeploySettings, PlannedRun, student_key
from kdcompress.errors import UserError

COSTS_FILE = "costs.json"
CALIBRATION_IMAGES = 64  # enough for the ranges of a latency measurement


@dataclass
class StudentCost:
    """What one candidate costs at deployment, and why it is left out (None: it is in)."""

    student: str
    params: int
    flops: int | None
    file_mb: float
    latency_ms: float
    latency_source: str
    precision: str
    batch: int
    input_size: list[int]
    excluded: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy_file(request: CompareRequest, student: str, precision: str) -> Path:
    """Where a candidate's deployable file lives (the file to bench on the target device)."""
    return request.out / "deploy" / f"{student_key(student)}.{precision}.onnx"


def _deployable(
    model: torch.nn.Module, input_size: tuple[int, int, int], path: Path, precision: str, data: Any
) -> Path:
    """``model`` as the ONNX file it would ship as, at ``precision``."""
    from kdcompress.deploy import quantize
    from kdcompress.deploy.export import labelled_batches
    from kdcompress.deploy.onnx import export_onnx

    fp32 = export_onnx(model, input_size, path.with_name(path.name.replace(f".{precision}.", ".fp32.")), 18)
    if precision == "fp32":
        return fp32
    if precision == "fp16":
        return quantize.convert_fp16(fp32, path)
    mode = quantize.choose_int8_mode(model, input_size)
    calibration = None
    if mode == "static":
        train = data.dataset.train.subset(torch.arange(min(len(data.dataset.train), CALIBRATION_IMAGES)))
        calibration = [images.numpy() for images, _ in labelled_batches(data, train, 32)]
    return quantize.quantize_int8(fp32, path, mode, calibration)


def _measure(request: CompareRequest, run: PlannedRun, settings: DeploySettings) -> StudentCost:
    from kdcompress.data import load_data
    from kdcompress.deploy.onnx import onnx_latency, onnx_session
    from kdcompress.models.cost import count_flops, count_parameters
    from kdcompress.models.factory import build_from_spec

    recipe = run.recipe()
    data = load_data(recipe.data)
    fmt = data.fmt
    model, _ = build_from_spec(recipe.student, "student", data.num_classes, fmt.channels, fmt.size)
    model.eval()
    try:
        path = _deployable(
            model,
            fmt.input_shape,
            deploy_file(request, run.student, settings.precision),
            settings.precision,
            data,
        )
    except UserError:
        raise
    except Exception as exc:  # an exporter or quantizer that cannot handle this architecture
        raise UserError(
            f"Student '{run.student}' cannot be made into a {settings.precision} ONNX file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); drop it from "
            "--students or deploy at another --deploy precision."
        ) from None
    session = onnx_session(path)
    latency = onnx_latency(session, torch.randn(settings.batch, *fmt.input_shape), warmup=5, repeats=30)
    return StudentCost(
        run.student,
        count_parameters(model),
        count_flops(model, fmt.input_shape),
        path.stat().st_size / 1e6,
        latency.median_ms,
        f"onnxruntime on this machine ({torch.get_num_threads()} threads), median of 30 calls",
        settings.precision,
        settings.batch,
        list(fmt.input_shape),
    )


def measured_latencies(files: tuple[Path, ...], batch: int) -> dict[str, tuple[float, str]]:
    """onnxruntime latencies at ``batch`` from ``kdcompress bench --json`` files, by file name and by
    architecture."""
    found: dict[str, tuple[float, str]] = {}
    for file in files:
        try:
            report = json.loads(Path(file).read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--latency-json '{file}' is not a readable bench JSON file ({exc}).") from None
        device = (report.get("machine") or {}).get("processor") or "the target"
        for entry in report.get("models", []) if isinstance(report, dict) else []:
            for row in entry.get("latency", []):
                if row.get("runtime") == "onnxruntime" and row.get("batch_size") == batch:
                    measured = (float(row["median_ms"]), f"{file} ({device})")
                    found[Path(str(entry.get("name", ""))).name] = measured
                    found.setdefault(str(entry.get("arch", "")), measured)
    return found


def _apply_budgets(cost: StudentCost, settings: DeploySettings) -> None:
    reasons = []
    if settings.max_latency_ms is not None and cost.latency_ms > settings.max_latency_ms:
        reasons.append(f"{cost.latency_ms:.2f} ms > --max-latency-ms {settings.max_latency_ms:g}")
    if settings.max_params is not None and cost.params > settings.max_params:
        reasons.append(f"{cost.params:,} parameters > --max-params {settings.max_params:,.0f}")
    if settings.max_mb is not None and cost.file_mb > settings.max_mb:
        reasons.append(f"{cost.file_mb:.2f} MB > --max-mb {settings.max_mb:g}")
    cost.excluded = "; ".join(reasons) or None


def student_costs(
    request: CompareRequest, first_runs: dict[str, PlannedRun], console: Any = None
) -> dict[str, StudentCost]:
    """Every student's deployment cost (measured once, then read from ``DIR/deploy/costs.json``), with
    the target device's latencies when given and the budgets applied."""
    settings = request.deploy or DeploySettings()
    path = request.out / "deploy" / COSTS_FILE
    known = json.loads(path.read_text()) if path.is_file() else {}
    costs: dict[str, StudentCost] = {}
    for student, run in first_runs.items():
        key = f"{student}|{settings.precision}|batch{settings.batch}"
        if key in known:
            costs[student] = StudentCost(**known[key])
        else:
            if console is not None:
                console.print(f"deployment cost of {student} ({settings.precision}, batch {settings.batch})")
            costs[student] = _measure(request, run, settings)
            known[key] = costs[student].to_dict()
            checkpoint.write_json(path, known)
    remote = measured_latencies(settings.latency_json, settings.batch) if settings.latency_json else {}
    for student, cost in costs.items():
        if remote:
            file = deploy_file(request, student, settings.precision).name
            measured = remote.get(file) or remote.get(student)
            if measured is None:
                raise UserError(
                    f"--latency-json has no onnxruntime measurement of '{student}' at batch "
                    f"{settings.batch}; "
                    f"bench {deploy_file(request, student, settings.precision)} on the target "
                    f"(`kdcompress bench FILE --batch-sizes {settings.batch} --json OUT`) and pass OUT too."
                )
            cost.latency_ms, cost.latency_source = measured
        _apply_budgets(cost, settings)
    return costs


def deployed_top1(run: PlannedRun, precision: str) -> dict[str, Any]:
    """The run's best student exported at ``precision`` and its onnxruntime top-1 on the validation
    split; kept in the run folder and redone only when the weights change."""
    from kdcompress.deploy.export import export
    from kdcompress.deploy.trained import data_for_model, evaluate_trained, load_trained

    weights = run.folder / checkpoint.STUDENT_FILE
    cache = run.folder / f"deployed-{precision}.json"
    stamp = weights.stat().st_mtime_ns
    if cache.is_file():
        known = json.loads(cache.read_text())
        if known.get("weights_mtime_ns") == stamp:
            return known
    result = export(run.folder, ["onnx"], run.folder / "deploy" / precision, precision=precision)
    file = result.files["onnx" if precision == "fp32" else f"onnx-{precision}"]
    trained = load_trained(file)
    metrics = evaluate_trained(trained, data_for_model(trained), "cpu")
    document = {
        "precision": precision,
        "top1": metrics["top1"],
        "file": str(file),
        "size_bytes": file.stat().st_size,
        "weights_mtime_ns": stamp,
    }
    checkpoint.write_json(cache, document)
    return document
