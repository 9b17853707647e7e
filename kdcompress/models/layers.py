"""Candidate layers of any model, found by module name from one traced forward pass.

Candidate ("generalized") layers, as the feature-only KD paper defines them, are the outputs of the
residual / inverted-residual / transformer blocks, plus the stem and the final pre-pool features. They
are discovered generically, from one probe forward pass with a hook on every module:

- **blocks**: the outermost modules whose class name says "block" (``BasicBlock``, ``Bottleneck``,
  ``ConvNeXtBlock``, ViT's ``Block``, ``WideBlock``, ``ShuffleV2Block`` ...) or "residual unit"
  (``InvertedResidual``, ``EdgeResidual``, ``DepthwiseSeparableConv``, ``ConvBnAct`` of timm's
  MobileNet / EfficientNet stages). Models without such blocks (VGG) use their **conv-ReLU units**
  instead: every activation module that directly follows a convolution or a norm layer in a Sequential.
- **stem**: ``feature_info[0]`` when it runs before the first block (``act1`` of a timm ResNet), else
  the module whose output is the first block's input (``stem`` of ConvNeXt, ``norm_pre`` of a ViT: the
  position-embedded tokens).
- **final**: the output of ``forward_features`` (the pre-pool map). When no module returns exactly that
  tensor (a functional ReLU at the end), the layer is :data:`~kdcompress.models.taps.FORWARD_FEATURES`.
- **stage ends**: the modules ``feature_info`` names. A stage end whose output *is* a candidate's output
  (``layer1`` returns the tensor of its last block ``layer1.2``) is that candidate, tagged with its stage
  index; otherwise it is added as a candidate of its own.

Layers are listed in forward (depth) order: the order in which their modules finish. Feature shapes are
per sample: ``(C, H, W)`` maps, ``(N, D)`` tokens, ``(D,)`` vectors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kdcompress.errors import UserError, did_you_mean
from kdcompress.models.modes import eval_mode
from kdcompress.models.taps import FORWARD_FEATURES, first_tensor

__all__ = [
    "Layer",
    "candidate_layers",
    "check_layer_names",
    "layers_past_stem",
    "middle_stage_layer",
    "stage_end_layers",
]

_BLOCK_CLASS = re.compile(r"(Block|Bottleneck|Residual|DepthwiseSeparableConv|ConvBnAct)\d*$")
_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.ELU,
    nn.Mish,
    nn.PReLU,
)


@dataclass(frozen=True)
class Layer:
    """One candidate layer: its module name, per-sample output shape, role and position."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "stem" | "block" | "unit" | "stage" | "final"
    depth: int  # position in forward order, 0 = shallowest
    stage_end: int | None = None  # index into feature_info when this layer ends a stage
    final: bool = False  # the output of forward_features (the pre-pool features)
    reduction: int | None = None  # feature_info's reduction for stage ends

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class _Call:
    name: str
    order: int
    output: torch.Tensor


@dataclass
class _Trace:
    calls: dict[str, _Call] = field(default_factory=dict)
    block_inputs: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    final: torch.Tensor | None = None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same tensor: one object, or views of the same memory with the same geometry."""
    if a is b:
        return True
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and a.device == b.device
        and a.stride() == b.stride()
        and a.numel() > 0
        and a.data_ptr() == b.data_ptr()
    )


def _feature_info(model: nn.Module) -> list[dict[str, Any]]:
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    if hasattr(info, "get_dicts"):
        return list(info.get_dicts())
    return [dict(entry) for entry in info]


def _block_names(model: nn.Module) -> list[str]:
    """Outermost modules whose class name marks a block (no block nested in another one)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix + ".") for prefix in found):
            continue
        if _BLOCK_CLASS.search(type(module).__name__):
            found.append(name)
    return found


def _unit_names(model: nn.Module) -> list[str]:
    """VGG-style conv-activation units: activations right after a conv or norm in a Sequential."""
    units = []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, _ACTIVATIONS):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = modules.get(parent_name)
        if not isinstance(parent, nn.Sequential):
            continue
        keys = list(parent._modules)
        index = keys.index(leaf)
        if index == 0:
            continue
        before = parent._modules[keys[index - 1]]
        if isinstance(before, nn.modules.conv._ConvNd) or "Norm" in type(before).__name__:
            units.append(name)
    return units


def _trace(model: nn.Module, x: torch.Tensor, watch_inputs: set[str]) -> _Trace:
    """One forward through ``forward_features`` (or ``forward``) recording every module's output."""
    trace = _Trace()
    counter = [0]
    handles = []

    def post(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is not None and name not in trace.calls:
                trace.calls[name] = _Call(name, counter[0], tensor)
                counter[0] += 1

        return hook

    def pre(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            if args and isinstance(args[0], torch.Tensor):
                trace.block_inputs.append((name, args[0]))

        return hook

    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_hook(post(name)))
        if name in watch_inputs:
            handles.append(module.register_forward_pre_hook(pre(name)))
    try:
        with eval_mode(model), torch.no_grad():
            run = getattr(model, "forward_features", None)
            if callable(run):
                trace.final = first_tensor(run(x))
            else:  # not a timm-style model: every module of the forward is a candidate source
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return trace


def _probe_input(model: nn.Module, input_shape: Sequence[int] | None) -> torch.Tensor:
    if input_shape is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        input_shape = cfg.get("input_size")
        if input_shape is None:
            raise ValueError("candidate_layers needs input_shape (C, H, W) for this model")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, *input_shape, generator=generator).to(device)


def candidate_layers(model: nn.Module, input_shape: Sequence[int] | None = None) -> list[Layer]:
    """The model's candidate layers in depth order, with per-sample output shapes for ``input_shape``.

    ``input_shape`` is ``(C, H, W)`` of one image (default: the model's pretrained cfg input size). One
    forward pass of a single random image in eval mode; the model's mode is restored.
    """
    blocks = _block_names(model)
    trace = _trace(model, _probe_input(model, input_shape), set(blocks))
    calls = trace.calls
    blocks = [b for b in blocks if b in calls]
    kind = "block"
    if not blocks:
        blocks, kind = [u for u in _unit_names(model) if u in calls], "unit"
    # name -> (kind, stage_end, final, reduction)
    chosen: dict[str, dict[str, Any]] = {b: {"kind": kind} for b in blocks}
    first_block = min((calls[b].order for b in blocks), default=None)

    def same_as(tensor: torch.Tensor, names: Iterable[str]) -> str | None:
        for name in names:
            if _same(calls[name].output, tensor):
                return name
        return None

    def in_block(name: str) -> bool:
        return any(name.startswith(b + ".") for b in blocks)

    def last_module_with(tensor: torch.Tensor) -> str | None:
        """The module outside every block whose output is ``tensor``: the shallowest by name (``stem``
        rather than the Identity ``stages.0.downsample`` passing it on), the last to finish among those."""
        hits = [c for c in calls.values() if _same(c.output, tensor) and not in_block(c.name)]
        if not hits:
            return None
        return min(hits, key=lambda c: (c.name.count("."), -c.order)).name

    info = _feature_info(model)
    # Stem.
    stem = None
    if info and info[0].get("module") in calls and kind == "block":
        name = info[0]["module"]
        inside = any(name == b or name.startswith(b + ".") or b.startswith(name + ".") for b in blocks)
        if not inside and first_block is not None and calls[name].order < first_block:
            stem = name
    if stem is None and kind == "block" and trace.block_inputs:
        first_input = next((t for n, t in trace.block_inputs if n in chosen), None)
        if first_input is not None:
            stem = last_module_with(first_input)
    if stem is not None and stem not in chosen:
        chosen[stem] = {"kind": "stem"}
    # Stage ends.
    for index, entry in enumerate(info):
        name = entry.get("module")
        if name not in calls:
            continue
        target = same_as(calls[name].output, chosen) or name
        chosen.setdefault(target, {"kind": "stage"})
        chosen[target].setdefault("stage_end", index)
        chosen[target].setdefault("reduction", entry.get("reduction"))
    # Final pre-pool features.
    if trace.final is not None:
        target = same_as(trace.final, chosen) or last_module_with(trace.final)
        if target is None:
            target = FORWARD_FEATURES
        chosen.setdefault(target, {"kind": "final"})
        chosen[target]["final"] = True

    def order(name: str) -> float:
        return calls[name].order if name in calls else math.inf

    def shape(name: str) -> tuple[int, ...]:
        tensor = calls[name].output if name in calls else trace.final
        return tuple(tensor.shape[1:])

    names = sorted(chosen, key=order)
    return [
        Layer(
            name=name,
            shape=shape(name),
            kind=chosen[name]["kind"],
            depth=depth,
            stage_end=chosen[name].get("stage_end"),
            final=chosen[name].get("final", False),
            reduction=chosen[name].get("reduction"),
        )
        for depth, name in enumerate(names)
    ]


def _spread(layers: list[Layer], k: int) -> list[str]:
    """``k`` of ``layers`` at evenly spaced depths, the last one included."""
    return [layers[math.ceil((i + 1) * len(layers) / k) - 1].name for i in range(k)]


def layers_past_stem(model: nn.Module, input_shape: Sequence[int] | None = None) -> int:
    """How many layers :func:`stage_end_layers` can choose from (its largest valid ``k``)."""
    layers = candidate_layers(model, input_shape)
    ends = [layer for layer in layers if layer.stage_end is not None and layer.kind != "stem"]
    return max(len(ends), sum(layer.kind in ("block", "unit") for layer in layers))


def stage_end_layers(
    model: nn.Module, k: int, input_shape: Sequence[int] | None = None, layers: list[Layer] | None = None
) -> list[str]:
    """``k`` layers ending the model's stages (its ``feature_info`` entries), shallow first; never the stem.

    The stem is left out, as the feature-KD papers do: a single conv cannot reproduce a deep feature.
    With at least ``k`` stage ends, the last ``k`` are used. Models whose ``feature_info`` entries all
    share one reduction (a ViT lists every block) have no stage structure, and models with fewer than
    ``k`` stage ends (a 3-stage CIFAR ResNet with ``k = 4``) use ``k`` evenly spaced blocks instead,
    ending at the last one.
    """
    if k < 1:
        raise UserError(f"The number of layer pairs must be at least 1, got {k}.")
    layers = layers if layers is not None else candidate_layers(model, input_shape)
    ends = sorted(
        (layer for layer in layers if layer.stage_end is not None and layer.kind != "stem"),
        key=lambda x: x.stage_end,
    )
    uniform = len({layer.reduction for layer in ends}) == 1 and len(ends) > 1
    if ends and not uniform and len(ends) >= k:
        return [layer.name for layer in ends[-k:]]
    blocks = ends if uniform else [layer for layer in layers if layer.kind in ("block", "unit")]
    if len(blocks) < k:
        names = ", ".join(layer.name for layer in blocks) or "none"
        raise UserError(
            f"The {type(model).__name__} model has only {len(blocks)} candidate layers past its stem "
            f"({names}); use at most {len(blocks)} layer pairs or name the layers with --align manual."
        )
    return _spread(blocks, k)


def middle_stage_layer(
    model: nn.Module, input_shape: Sequence[int] | None = None, layers: list[Layer] | None = None
) -> str:
    """FitNet's default hint: the stage end at index ``len // 2`` of ``feature_info`` (mdistiller's
    ``HINT_LAYER = 2`` for the CIFAR ResNets: stem, layer1, *layer2*, layer3)."""
    layers = layers if layers is not None else candidate_layers(model, input_shape)
    ends = sorted((layer for layer in layers if layer.stage_end is not None), key=lambda x: x.stage_end)
    if not ends:
        ends = [layer for layer in layers if layer.kind in ("block", "unit")]
    if not ends:
        raise UserError(f"The {type(model).__name__} model has no stage ends; name the hint layer yourself.")
    return ends[len(ends) // 2].name


def check_layer_names(
    model: nn.Module,
    names: Sequence[str],
    role: str,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
) -> None:
    """Raise a UserError naming the first layer that is not a module of ``model``, listing valid ones."""
    modules = {name for name, _ in model.named_modules() if name}
    modules.add(FORWARD_FEATURES)
    for name in names:
        if name in modules:
            continue
        try:
            valid = [layer.name for layer in candidate_layers(model, input_shape)]
        except Exception:  # noqa: BLE001 - the listing is a courtesy; the error below is what matters
            valid = []
        shown = ", ".join(valid[:40]) + (", ..." if len(valid) > 40 else "")
        hint = did_you_mean(name, [*valid, *modules])
        what = f"the {role} ({arch})" if arch else f"the {role}"
        raise UserError(
            f"Layer '{name}' is not a module of {what}; candidate layers are: {shown or 'none found'}.{hint}"
        )
