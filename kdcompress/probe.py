"""The layer probe: knowledge quality Q of every candidate teacher layer, and feature-pair alignment.

Used by ``kdcompress probe-layers`` and by ``--align auto`` of the feature methods (``featkd``,
``fitnet``), so both always choose the same layers for the same teacher and data.

Pipeline (:func:`probe_layers`):

1. **Sample.** A class-balanced subset of the *training* split (``quality.balanced_indices``, seed 0,
   ``samples`` images, 5,000 by default as in the paper), un-augmented, in the model's input format.
2. **Candidate layers** of the teacher (:func:`kdcompress.models.layers.candidate_layers`), in depth
   order.
3. **Features, group by group.** A layer's features are stored as ``[n, D]`` float32 on the host. A map
   with more than 262,144 values per sample is spatially max-pooled first (METHODS.md), to the coarsest
   grid that still keeps every position when possible: the smallest integer factor ``s`` with
   ``C * ceil(H/s) * ceil(W/s) <= 262,144`` (``--max-dim`` lowers that bound). Layers are packed, in depth
   order, into groups whose stored features fit a memory budget (2 GiB by default); one pass of the
   sample through the teacher fills every layer of a group at once, and the pass stops right after the
   group's deepest layer (a hook ends it), so shallow groups cost little. A resnet50 at 32x32 with 5,000
   samples needs ~2.7 GB of features in all: two groups, i.e. about 1.5 forward passes of the sample.
4. **Quality.** ``quality.knowledge_quality(features, labels, n_train=len(train split))`` per layer (on
   the GPU when the teacher runs on one, else on the CPU), right after its group was filled; the group's
   features are freed before the next group starts. Peak memory: the budget plus one ``n x n`` float64
   Gram matrix (200 MB at n = 5,000).
5. **Choice.** ``quality.select_layers``: the ``top_k`` layers with the highest Q, in depth order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from kdcompress import quality
from kdcompress.errors import UserError
from kdcompress.models.layers import (
    FeatureTap,
    Layer,
    candidate_layers,
    check_layer_names,
    middle_stage_layer,
    stage_end_layers,
)

if TYPE_CHECKING:
    from kdcompress.data import DataBundle

__all__ = [
    "MAX_VALUES",
    "Alignment",
    "ProbeResult",
    "ProbeRow",
    "align_layers",
    "pooled_shape",
    "probe_layers",
    "resolve_probe_device",
]

#: Per-sample value count above which a feature map is spatially max-pooled (METHODS.md).
MAX_VALUES = 262_144
DEFAULT_BUDGET_BYTES = 2 * 2**30


@dataclass
class ProbeRow:
    """One probed layer: where it is, what was measured and whether it was chosen."""

    name: str
    depth: int
    kind: str
    shape: list[int]
    pooled_shape: list[int]
    dim: int
    stage_end: int | None
    separation: float
    information: float
    efficiency: float
    quality: float
    chosen: bool = False
    seconds: float = 0.0


@dataclass
class ProbeResult:
    """Rows in depth order, the chosen layers (depth order) and how the probe ran."""

    rows: list[ProbeRow]
    chosen: list[str]
    settings: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)

    def scores(self) -> dict[str, float]:
        return {row.name: row.quality for row in self.rows}

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "chosen": self.chosen,
            "timings": self.timings,
            "rows": [asdict(row) for row in self.rows],
        }


def resolve_probe_device(spec: str | torch.device | None) -> torch.device:
    """``auto``/None -> the GPU when there is one, else the CPU."""
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from kdcompress.runtime import resolve_device

    return resolve_device(spec)


def pooled_shape(shape: Sequence[int], max_values: int = MAX_VALUES) -> tuple[int, ...]:
    """The per-sample shape a layer is stored at: ``shape`` itself when it has at most ``max_values``
    values, else spatially max-pooled by the smallest integer factor that fits (1x1 / 1 token at most)."""
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) <= max_values or len(shape) == 1:
        return shape
    if len(shape) == 3:
        c, h, w = shape
        for s in range(2, max(h, w) + 1):
            out = (c, math.ceil(h / s), math.ceil(w / s))
            if math.prod(out) <= max_values:
                return out
        return (c, 1, 1)
    n, d = shape
    for s in range(2, n + 1):
        if math.ceil(n / s) * d <= max_values:
            return (math.ceil(n / s), d)
    return (1, d)


def _reduce_fn(targets: dict[str, tuple[int, ...]]):
    """Hook-side reduction: max-pool to the stored shape, flatten, float32."""

    def reduce(name: str, x: torch.Tensor) -> torch.Tensor:
        target = targets[name]
        if tuple(x.shape[1:]) != target:
            if x.dim() == 4:
                x = F.adaptive_max_pool2d(x, target[1:])
            elif x.dim() == 3:
                x = F.adaptive_max_pool1d(x.transpose(1, 2), target[0]).transpose(1, 2)
        return x.reshape(x.shape[0], -1).float()

    return reduce


def _groups(layers: list[Layer], dims: dict[str, int], n: int, budget: int) -> list[list[Layer]]:
    """Pack layers in depth order into groups whose float32 features fit ``budget`` bytes."""
    groups: list[list[Layer]] = []
    current: list[Layer] = []
    used = 0
    for layer in layers:
        size = n * dims[layer.name] * 4
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0
        current.append(layer)
        used += size
    if current:
        groups.append(current)
    return groups


def _sample_loader(data: DataBundle, indices: torch.Tensor, batch_size: int, device: torch.device):
    from kdcompress.data import Loader

    split = data.dataset.train.subset(indices)
    return Loader(
        split, data.transform(device, False), batch_size, device, False, num_workers=0, decoding=data.decoding
    )


def _quality(features: torch.Tensor, labels: torch.Tensor, n_train: int, device: torch.device) -> dict:
    if device.type != "cpu":
        try:
            return quality.knowledge_quality(features.to(device), labels.to(device), n_train=n_train)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
    return quality.knowledge_quality(features, labels, n_train=n_train)


def probe_layers(
    model: nn.Module,
    data: DataBundle,
    *,
    samples: int = 5000,
    top_k: int = 4,
    layers: Sequence[str] | None = None,
    device: str | torch.device | None = None,
    max_dim: int | None = None,
    batch_size: int = 128,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    seed: int = 0,
    console: Console | None = None,
    show_progress: bool = True,
    arch: str | None = None,
) -> ProbeResult:
    """Measure S, I, E and Q of the teacher's candidate layers (or ``layers``) and choose ``top_k``.

    The model is moved to ``device`` for the probe and back afterwards, and its train/eval mode is
    restored. See the module docstring for the memory strategy.
    """
    if samples < 2:
        raise UserError(f"The probe needs at least 2 samples, got {samples}.")
    if max_dim is not None and max_dim < 1:
        raise UserError(f"--max-dim must be a positive value count, got {max_dim}.")
    limit = min(MAX_VALUES, max_dim) if max_dim is not None else MAX_VALUES
    run_device = resolve_probe_device(device)
    console = console or Console(stderr=True)
    fmt = data.fmt
    input_shape = (fmt.channels, fmt.size, fmt.size)
    start_wall, start_cpu = time.perf_counter(), time.process_time()

    original_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.to(run_device).eval()
    try:
        candidates = candidate_layers(model, input_shape)
        if layers is not None:
            check_layer_names(model, layers, "teacher", input_shape, arch)
            by_name = {layer.name: layer for layer in candidates}
            missing = [name for name in layers if name not in by_name]
            if missing:
                from kdcompress.models.layers import tapped_shapes

                example = torch.zeros(1, *input_shape, device=run_device)
                extra = tapped_shapes(model, missing, example)
                for name in missing:
                    by_name[name] = Layer(name, extra[name], "named", len(by_name))
            order = {layer.name: layer.depth for layer in candidates}
            probed = sorted((by_name[name] for name in layers), key=lambda x: order.get(x.name, math.inf))
        else:
            probed = candidates
        if not 1 <= top_k <= len(probed):
            raise UserError(
                f"Cannot choose {top_k} layers (--top-k / num_pairs) from the {len(probed)} probed layers; "
                f"use 1..{len(probed)}."
            )

        labels_all = data.dataset.train.labels
        if torch.unique(labels_all).numel() < 2:
            raise UserError("The probe needs training samples of at least 2 classes.")
        indices = quality.balanced_indices(labels_all, samples, seed=seed)
        n = len(indices)
        n_train = len(data.dataset.train)
        loader = _sample_loader(data, indices, batch_size, run_device)
        labels = labels_all[indices].cpu()
        stored = {layer.name: pooled_shape(layer.shape, limit) for layer in probed}
        dims = {name: math.prod(shape) for name, shape in stored.items()}
        groups = _groups(probed, dims, n, budget_bytes)
        reduce = _reduce_fn(stored)
        quality_device = run_device if run_device.type == "cuda" else torch.device("cpu")

        rows: list[ProbeRow] = []
        feature_seconds = quality_seconds = 0.0
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        disable = not (show_progress and console.is_terminal)
        with Progress(*columns, console=console, transient=True, disable=disable) as bar:
            feat_task = bar.add_task("features", total=len(groups) * len(loader))
            q_task = bar.add_task("knowledge quality", total=len(probed))
            for g, group in enumerate(groups, start=1):
                tick = time.perf_counter()
                names = [layer.name for layer in group]
                buffers = {name: torch.empty(n, dims[name], dtype=torch.float32) for name in names}
                bar.update(feat_task, description=f"features (group {g}/{len(groups)})")
                tap = FeatureTap(model, names, reduce=reduce, stop_after_last=True)
                offset = 0
                with torch.inference_mode():
                    for batch in loader.batches():
                        tap.run(batch.images)
                        size = batch.images.shape[0]
                        for name in names:
                            buffers[name][offset : offset + size] = tap.features[name].cpu()
                        offset += size
                        bar.advance(feat_task)
                feature_seconds += time.perf_counter() - tick
                for layer in group:
                    tick = time.perf_counter()
                    bar.update(q_task, description=f"knowledge quality ({layer.name})")
                    scores = _quality(buffers.pop(layer.name), labels, n_train, quality_device)
                    seconds = time.perf_counter() - tick
                    quality_seconds += seconds
                    rows.append(
                        ProbeRow(
                            name=layer.name,
                            depth=layer.depth,
                            kind=layer.kind,
                            shape=list(layer.shape),
                            pooled_shape=list(stored[layer.name]),
                            dim=dims[layer.name],
                            stage_end=layer.stage_end,
                            separation=scores["separation"],
                            information=scores["information"],
                            efficiency=scores["efficiency"],
                            quality=scores["quality"],
                            seconds=seconds,
                        )
                    )
                    bar.advance(q_task)
    finally:
        model.to(original_device).train(was_training)

    try:
        chosen = quality.select_layers({row.name: row.quality for row in rows}, top_k)
    except ValueError as exc:
        raise UserError(f"Cannot choose layers: {exc}.") from None
    for row in rows:
        row.chosen = row.name in chosen
    settings = {
        "teacher": arch,
        "data": getattr(data.dataset, "name", None),
        "samples": n,
        "samples_requested": samples,
        "n_train": n_train,
        "input_shape": list(input_shape),
        "top_k": top_k,
        "max_values": limit,
        "seed": seed,
        "device": str(run_device),
        "batch_size": batch_size,
        "groups": len(groups),
        "budget_bytes": budget_bytes,
    }
    timings = {
        "features_seconds": feature_seconds,
        "quality_seconds": quality_seconds,
        "total_seconds": time.perf_counter() - start_wall,
        "process_cpu_seconds": time.process_time() - start_cpu,
    }
    return ProbeResult(rows, chosen, settings, timings)


# --------------------------------------------------------------------------------------------------
# Alignment of feature pairs for the feature methods
# --------------------------------------------------------------------------------------------------


@dataclass
class Alignment:
    """Teacher and student layers paired one-to-one (depth order), and the probe when one ran."""

    teacher_layers: list[str]
    student_layers: list[str]
    probe: ProbeResult | None = None


def align_layers(
    mode: str,
    teacher: nn.Module,
    student: nn.Module,
    input_shape: Sequence[int],
    k: int,
    *,
    teacher_layers: Sequence[str] | None = None,
    student_layers: Sequence[str] | None = None,
    default: str = "stages",
    data: DataBundle | None = None,
    probe_samples: int = 5000,
    probe_device: str | None = "auto",
    method: str = "the feature method",
) -> Alignment:
    """Fill in the layer pairs a feature method distils.

    Layers given explicitly always win (this is also how a resumed run keeps the layers its first run
    chose). Missing ones come from ``mode``:

    - ``manual``: none may be missing.
    - ``stages``: the last ``k`` stage ends of each model (``default="middle"``: the middle stage end,
      FitNet's hint, with ``k == 1``).
    - ``auto``: the teacher's ``k`` highest-Q layers from :func:`probe_layers` on the training data;
      the student's side as for ``stages``.
    """
    if mode not in ("auto", "manual", "stages"):
        raise UserError(f"Unknown --align mode '{mode}'; use auto, manual or stages.")
    t_names = list(teacher_layers) if teacher_layers else None
    s_names = list(student_layers) if student_layers else None
    if mode == "manual" and (t_names is None or s_names is None):
        raise UserError(
            f"--align manual needs both teacher and student layers for {method}; set them, e.g. "
            "--set method.teacher_layers=[layer2,layer3] --set method.student_layers=[layer2,layer3] "
            "(`kdcompress probe-layers --list` shows a model's layers)."
        )
    if t_names is not None:
        check_layer_names(teacher, t_names, "teacher", input_shape)
    if s_names is not None:
        check_layer_names(student, s_names, "student", input_shape)

    def defaults(model: nn.Module) -> list[str]:
        if default == "middle":
            return [middle_stage_layer(model, input_shape)]
        return stage_end_layers(model, k, input_shape)

    probe = None
    if t_names is None:
        if mode == "auto":
            if data is None:
                raise UserError(f"--align auto for {method} needs the training data to probe the teacher.")
            probe = probe_layers(
                teacher, data, samples=probe_samples, top_k=k, device=probe_device, show_progress=True
            )
            t_names = probe.chosen
        else:
            t_names = defaults(teacher)
    if s_names is None:
        s_names = (
            stage_end_layers(student, len(t_names), input_shape) if default != "middle" else defaults(student)
        )
    if len(t_names) != len(s_names):
        raise UserError(
            f"{method} pairs layers one-to-one but got {len(t_names)} teacher and {len(s_names)} student "
            "layers; give lists of the same length."
        )
    return Alignment(t_names, s_names, probe)
