"""Teacher features for the probe: which layers, at what stored size, collected group by group.

A layer's features are stored as ``[n, D]`` float32 on the host; maps with more than
:data:`MAX_VALUES` values per sample are spatially max-pooled first (docs/feature-kd.md). Layers are
packed in depth order into groups that fit a memory budget, and one pass of the sample through the
teacher fills a whole group, stopping right after its deepest layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.data import Loader
from kdcompress.models.layers import Layer, candidate_layers, check_layer_names
from kdcompress.models.taps import FeatureTap, tapped_shapes

#: Per-sample value count above which a feature map is spatially max-pooled (docs/feature-kd.md).
MAX_VALUES = 262_144


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


def reduce_fn(targets: dict[str, tuple[int, ...]]):
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


def pack_groups(layers: list[Layer], dims: dict[str, int], n: int, budget: int) -> list[list[Layer]]:
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


def probed_layers(
    model: nn.Module, input_shape: tuple[int, ...], layers: Sequence[str] | None, arch: str | None
) -> list[Layer]:
    """The candidate layers, or the named ``layers`` (candidates or not) in depth order."""
    candidates = candidate_layers(model, input_shape)
    if layers is None:
        return candidates
    check_layer_names(model, layers, "teacher", input_shape, arch)
    by_name = {layer.name: layer for layer in candidates}
    missing = [name for name in layers if name not in by_name]
    if missing:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        extra = tapped_shapes(model, missing, torch.zeros(1, *input_shape, device=device))
        for name in missing:
            by_name[name] = Layer(name, extra[name], "named", len(by_name))
    order = {layer.name: layer.depth for layer in candidates}
    return sorted((by_name[name] for name in layers), key=lambda x: order.get(x.name, math.inf))


def collect_features(
    model: nn.Module,
    loader: Loader,
    groups: list[list[Layer]],
    stored: dict[str, tuple[int, ...]],
    n: int,
    on_batch: Any = None,
) -> Iterator[tuple[Layer, torch.Tensor]]:
    """``(layer, features [n, D] float32 on the host)`` for every layer, group by group.

    One pass of the sample through ``model`` per group fills all of its layers (the pass stops after the
    group's deepest layer); a group's features are yielded before the next group is collected, so at
    most one group is alive at a time. ``on_batch()`` is called after every batch (progress).
    """
    reduce = reduce_fn(stored)
    for group in groups:
        names = [layer.name for layer in group]
        buffers = {name: torch.empty(n, math.prod(stored[name]), dtype=torch.float32) for name in names}
        tap = FeatureTap(model, names, reduce=reduce, stop_after_last=True)
        offset = 0
        with torch.inference_mode():
            for batch in loader.batches():
                tap.run(batch.images)
                size = batch.images.shape[0]
                for name in names:
                    buffers[name][offset : offset + size] = tap.features[name].cpu()
                offset += size
                if on_batch is not None:
                    on_batch()
        for layer in group:
            yield layer, buffers.pop(layer.name)
