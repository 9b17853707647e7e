"""The layer probe: knowledge quality Q of every candidate teacher layer, and the layers it chooses.

Used by ``kdcompress probe-layers`` and by ``--align auto`` of the feature methods (``featkd``,
``fitnet``), so both always choose the same layers for the same teacher and data.

Pipeline (:func:`probe_layers`):

1. **Sample.** A class-balanced subset of the *training* split (``quality.balanced_indices``, seed 0,
   ``samples`` images, 5,000 by default as in the paper), un-augmented, in the model's input format.
2. **Candidate layers** of the teacher (:func:`kdcompress.models.layers.candidate_layers`), in depth
   order.
3. **Features, group by group.** A layer's features are stored as ``[n, D]`` float32 on the host. A map
   with more than 262,144 values per sample is spatially max-pooled first (docs/feature-kd.md), to the
   coarsest grid that still keeps every position when possible: the smallest integer factor ``s`` with
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

import hashlib
import json
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from kdcompress import checkpoint
from kdcompress.data import DataBundle, load_data
from kdcompress.data.sources import TensorSplit
from kdcompress.errors import UserError
from kdcompress.models.factory import build_from_spec
from kdcompress.models.layers import Layer
from kdcompress.models.modes import eval_mode
from kdcompress.models.preprocessing import carried_spec, resolve_spec
from kdcompress.probe import quality
from kdcompress.probe.collect import MAX_VALUES, collect_features, pack_groups, pooled_shape, probed_layers
from kdcompress.runtime import resolve_device

if TYPE_CHECKING:
    from kdcompress.recipe import ProbeRecipe

__all__ = ["MAX_VALUES", "ProbeResult", "ProbeRow", "pooled_shape", "probe_layers", "resolve_probe_device"]

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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            [ProbeRow(**row) for row in data["rows"]], data["chosen"], data["settings"], data["timings"]
        )


def resolve_probe_device(spec: str | torch.device | None) -> torch.device:
    """``auto``/None -> the GPU when there is one, else the CPU."""
    return spec if isinstance(spec, torch.device) else resolve_device(spec or "auto")


def _quality(features: torch.Tensor, labels: torch.Tensor, n_train: int, device: torch.device) -> dict:
    if device.type != "cpu":
        try:
            return quality.knowledge_quality(features.to(device), labels.to(device), n_train=n_train)
        except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError, spelled as torch < 2.5 knows it
            torch.cuda.empty_cache()
    return quality.knowledge_quality(features, labels, n_train=n_train)


def score_layer(
    layer: Layer,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    n_train: int,
    stored_shape: tuple[int, ...],
    device: torch.device,
) -> ProbeRow:
    """One layer's S, I, E and Q (on ``device`` when it is a GPU with room, else on the CPU)."""
    tick = time.perf_counter()
    scores = _quality(features, labels, n_train, device)
    return ProbeRow(
        name=layer.name,
        depth=layer.depth,
        kind=layer.kind,
        shape=list(layer.shape),
        pooled_shape=list(stored_shape),
        dim=math.prod(stored_shape),
        stage_end=layer.stage_end,
        separation=scores["separation"],
        information=scores["information"],
        efficiency=scores["efficiency"],
        quality=scores["quality"],
        seconds=time.perf_counter() - tick,
    )


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
    input_shape = data.fmt.input_shape
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    labels_all = data.dataset.train.labels
    if torch.unique(labels_all).numel() < 2:
        raise UserError("The probe needs training samples of at least 2 classes.")

    original_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    model.to(run_device)
    try:
        with eval_mode(model):
            probed = probed_layers(model, input_shape, layers, arch)
            if not 1 <= top_k <= len(probed):
                raise UserError(
                    f"Cannot choose {top_k} layers (--top-k / num_pairs) from the {len(probed)} probed "
                    f"layers; use 1..{len(probed)}."
                )
            indices = quality.balanced_indices(labels_all, samples, seed=seed)
            n, n_train = len(indices), len(data.dataset.train)
            smallest = int(torch.bincount(labels_all[indices]).min())
            if smallest < 2:
                warnings.warn(
                    f"The probe's {n} samples give some class fewer than 2 samples, so its spectrum is empty "
                    f"and the information term I is 0 for every layer; use --samples "
                    f"{2 * data.num_classes} or more.",
                    stacklevel=2,
                )
            loader = data.eval_loader(data.dataset.train.subset(indices), batch_size, run_device)
            labels = labels_all[indices].cpu()
            stored = {layer.name: pooled_shape(layer.shape, limit) for layer in probed}
            dims = {name: math.prod(shape) for name, shape in stored.items()}
            groups = pack_groups(probed, dims, n, budget_bytes)
            quality_device = run_device if run_device.type == "cuda" else torch.device("cpu")
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            disable = not (show_progress and console.is_terminal)
            rows: list[ProbeRow] = []
            with Progress(*columns, console=console, transient=True, disable=disable) as bar:
                task = bar.add_task("features and knowledge quality", total=len(groups) * len(loader))
                tick = time.perf_counter()
                for layer, features in collect_features(
                    model, loader, groups, stored, n, on_batch=lambda: bar.advance(task)
                ):
                    bar.update(task, description=f"knowledge quality ({layer.name})")
                    rows.append(
                        score_layer(
                            layer,
                            features,
                            labels,
                            n_train=n_train,
                            stored_shape=stored[layer.name],
                            device=quality_device,
                        )
                    )
                collected_seconds = time.perf_counter() - tick
    finally:
        model.to(original_device)

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
    quality_seconds = sum(row.seconds for row in rows)
    timings = {
        "features_seconds": collected_seconds - quality_seconds,
        "quality_seconds": quality_seconds,
        "total_seconds": time.perf_counter() - start_wall,
        "process_cpu_seconds": time.process_time() - start_cpu,
    }
    return ProbeResult(rows, chosen, settings, timings)


def probe_recipe_inputs(recipe: ProbeRecipe, weights_needed: bool = True) -> tuple[nn.Module, DataBundle]:
    """The teacher (weights loaded) and the data a :class:`~kdcompress.recipe.ProbeRecipe` names, in the
    teacher's input convention (the same resolution ``distill`` applies, docs/data.md).

    Measuring a random teacher is meaningless, so it is refused unless the recipe allows it; listing
    layers (``weights_needed=False``) works on any teacher."""
    data = load_data(recipe.data)
    spec = recipe.teacher
    if not weights_needed and not spec.weights:
        spec = spec.model_copy(update={"allow_random": True})
    model, _ = build_from_spec(spec, "teacher", data.num_classes, data.fmt.channels, data.fmt.size)
    teacher_spec = resolve_spec("teacher", spec.input, carried_spec(model, spec), data.spec)
    data = data.resampled_for(recipe.data, [teacher_spec]).with_spec(teacher_spec)
    return model, data


def run_probe(recipe: ProbeRecipe, console: Console | None = None) -> ProbeResult:
    """``kdcompress probe-layers``: probe the recipe's teacher on its data with its probe options."""
    model, data = probe_recipe_inputs(recipe)
    options = recipe.probe
    result = probe_layers(
        model,
        data,
        samples=options.samples,
        top_k=options.top_k,
        device=options.device,
        max_dim=options.max_dim,
        batch_size=options.batch_size,
        console=console,
        arch=recipe.teacher.arch,
    )
    result.settings.update(
        {
            "teacher": recipe.teacher.arch,
            "teacher_weights": recipe.teacher.weights,
            "data": recipe.data.source,
        }
    )
    return result


def _fingerprint(model: nn.Module, data: DataBundle, settings: dict[str, Any]) -> str:
    """A key that changes when anything the probe's result depends on changes: the teacher's weights,
    the training images and labels, their format, and the probe's settings."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    train = data.dataset.train
    digest.update(train.labels.numpy().tobytes())
    if isinstance(train, TensorSplit):
        digest.update(train.images.numpy().tobytes())
    else:
        digest.update("\n".join(str(p) for p in train.paths).encode())
    fmt, spec, decoding = data.fmt, data.spec, data.decoding
    look = [fmt.channels, fmt.size, spec.mean, spec.std, decoding.crop_pct, decoding.interpolation]
    digest.update(json.dumps(look).encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def cached_probe(model: nn.Module, data: DataBundle, **options: Any) -> ProbeResult:
    """:func:`probe_layers`, reusing an earlier result for the same teacher, data and settings.

    ``--align auto`` probes the teacher before every run, and a comparison trains the same teacher with
    several seeds and methods: the probe (minutes on a CPU) is deterministic, so its result is kept in
    the cache folder (:func:`kdcompress.checkpoint.cache_root`) and computed once.
    """
    settings = {k: v for k, v in options.items() if k in ("samples", "top_k", "layers", "max_dim", "seed")}
    path = checkpoint.cache_root() / "probe" / f"{_fingerprint(model, data, settings)}.json"
    if path.is_file():
        return ProbeResult.from_dict(json.loads(path.read_text()))
    result = probe_layers(model, data, **options)
    checkpoint.write_json(path, result.to_dict())
    return result
