"""Candidate layers of any model, found by module name, and forward hooks that capture (or alter) them.

Feature distillation and the knowledge-quality probe talk about layers by *module name* (``layer2.1``,
``blocks.7``): a layer's features are the output of that module, captured with a forward hook, so no
model is rewritten to return features.

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
  tensor (a functional ReLU at the end), the layer is called ``forward_features`` and captured by
  wrapping that method for the duration of the capture.
- **stage ends**: the modules ``feature_info`` names. A stage end whose output *is* a candidate's output
  (``layer1`` returns the tensor of its last block ``layer1.2``) is that candidate, tagged with its stage
  index; otherwise it is added as a candidate of its own.

Layers are listed in forward (depth) order: the order in which their modules finish.

Feature shapes are per sample: ``(C, H, W)`` maps, ``(N, D)`` tokens, ``(D,)`` vectors. The helpers at
the end convert between these layouts and a channels-first ``[B, C, *spatial]`` view and build the
connectors (1x1 conv, optional BN, spatial resampling) that feature methods put between student and
teacher layers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.errors import UserError, did_you_mean

__all__ = [
    "FORWARD_FEATURES",
    "Connector",
    "FeatureTap",
    "Layer",
    "candidate_layers",
    "channels_first",
    "check_layer_names",
    "feature_kind",
    "from_channels_first",
    "middle_stage_layer",
    "pool_to",
    "resample",
    "stage_end_layers",
    "tapped_shapes",
]

#: Pseudo layer name for the output of ``model.forward_features`` when no module produces it.
FORWARD_FEATURES = "forward_features"

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


# --------------------------------------------------------------------------------------------------
# Capturing outputs
# --------------------------------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once every wanted layer was captured."""


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


class FeatureTap:
    """Capture the outputs of named modules with forward hooks; the model itself is not changed.

    Use as a context manager (hooks live inside the ``with`` block only)::

        with FeatureTap(model, ["layer2.1", "layer3.1"]) as tap:
            logits = model(x)
        feats = tap.features            # {name: output tensor}, graph kept

    Args:
        model: any ``nn.Module``.
        names: module names (``model.named_modules()``) or :data:`FORWARD_FEATURES`.
        replace: ``{name: fn}``: the module's output ``y`` is stored as captured, but the rest of the
            network receives ``fn(y)`` instead (``torch.Tensor.detach`` cuts gradients there).
        reduce: applied to each output before it is stored (e.g. pooling); does not affect the network.
        stop_after_last: end the forward pass as soon as every named layer was captured (the layers
            after the deepest one are not computed); use :meth:`run`, which returns ``None`` then.

    ``order`` lists the names in the order their outputs were produced during the last pass.
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        *,
        replace: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
        reduce: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
        stop_after_last: bool = False,
    ) -> None:
        self.model = model
        self.names = list(dict.fromkeys(names))
        self.replace = dict(replace or {})
        self.reduce = reduce
        self.stop_after_last = stop_after_last
        self.features: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self._handles: list[Any] = []
        self._patched = False
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n != FORWARD_FEATURES and (n not in modules or n == "")]
        if missing:
            raise ValueError(f"FeatureTap: the model has no module named {', '.join(map(repr, missing))}")
        unknown = [n for n in self.replace if n not in self.names]
        if unknown:
            raise ValueError(f"FeatureTap: replace names {unknown} are not tapped")
        self._modules = {n: modules[n] for n in self.names if n != FORWARD_FEATURES}

    # -- hook plumbing --------------------------------------------------------------------------
    def _capture(self, name: str, output: Any) -> Any:
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(f"FeatureTap: module '{name}' returned {type(output).__name__}, not a tensor")
        self.features[name] = self.reduce(name, tensor) if self.reduce is not None else tensor
        self.order.append(name)
        result = output
        fn = self.replace.get(name)
        if fn is not None:
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"FeatureTap: cannot replace the non-tensor output of '{name}'")
            result = fn(output)
        if self.stop_after_last and len(self.features) == len(self.names):
            raise _StopForward
        return result

    def _hook(self, name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            result = self._capture(name, output)
            return None if result is output else result

        return hook

    def attach(self) -> FeatureTap:
        if self._handles or self._patched:
            return self
        self.features, self.order = {}, []
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        if FORWARD_FEATURES in self.names:
            original = type(self.model).forward_features

            def forward_features(*args: Any, **kwargs: Any) -> Any:
                return self._capture(FORWARD_FEATURES, original(self.model, *args, **kwargs))

            self.model.__dict__["forward_features"] = forward_features
            self._patched = True
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._patched:
            self.model.__dict__.pop("forward_features", None)
            self._patched = False

    def __enter__(self) -> FeatureTap:
        return self.attach()

    def __exit__(self, *exc: Any) -> bool:
        self.remove()
        return exc[0] is _StopForward  # a stop signal ends the pass quietly

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args)`` with the hooks attached; ``None`` when ``stop_after_last`` ended it early."""
        self.features, self.order = {}, []
        attached_here = not self._handles and not self._patched
        if attached_here:
            self.attach()
        try:
            return self.model(*args, **kwargs)
        except _StopForward:
            return None
        finally:
            if attached_here:
                self.remove()


def tapped_shapes(
    model: nn.Module, names: Sequence[str], example: torch.Tensor
) -> dict[str, tuple[int, ...]]:
    """Per-sample output shapes of the named layers for ``example`` (eval mode, no grad, mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tap = FeatureTap(model, names, stop_after_last=True)
            tap.run(example)
    finally:
        model.train(was_training)
    return {name: tuple(tap.features[name].shape[1:]) for name in names}


# --------------------------------------------------------------------------------------------------
# Candidate layers
# --------------------------------------------------------------------------------------------------


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
            tensor = _first_tensor(output)
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
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run = getattr(model, "forward_features", None)
            if callable(run):
                trace.final = _first_tensor(run(x))
            else:  # not a timm-style model: every module of the forward is a candidate source
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
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


def stage_end_layers(
    model: nn.Module, k: int, input_shape: Sequence[int] | None = None, layers: list[Layer] | None = None
) -> list[str]:
    """The layers ending the model's last ``k`` stages (its ``feature_info`` entries), shallow first.

    Models whose ``feature_info`` entries all share one reduction (a ViT lists every block) have no
    stage structure: their entries are split into ``k`` equal groups and the group ends returned.
    Without ``feature_info``, the candidate blocks are split the same way.
    """
    layers = layers if layers is not None else candidate_layers(model, input_shape)
    ends = sorted((layer for layer in layers if layer.stage_end is not None), key=lambda x: x.stage_end)
    if not ends:
        ends = [layer for layer in layers if layer.kind in ("block", "unit")]
        uniform = True
    else:
        uniform = len({layer.reduction for layer in ends}) == 1 and len(ends) > 1
    if k < 1:
        raise UserError(f"The number of layer pairs must be at least 1, got {k}.")
    if len(ends) < k:
        names = ", ".join(layer.name for layer in ends) or "none"
        raise UserError(
            f"The {type(model).__name__} model has only {len(ends)} stage ends ({names}); use at most "
            f"{len(ends)} layer pairs or name the layers with --align manual."
        )
    if uniform:
        picks = [math.ceil((i + 1) * len(ends) / k) - 1 for i in range(k)]
        return [ends[i].name for i in picks]
    return [layer.name for layer in ends[-k:]]


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


# --------------------------------------------------------------------------------------------------
# Feature layouts, resampling and connectors
# --------------------------------------------------------------------------------------------------


def feature_kind(shape: Sequence[int]) -> str:
    """``"map"`` for ``(C, H, W)``, ``"tokens"`` for ``(N, D)``, ``"vector"`` for ``(D,)`` (per sample)."""
    kinds = {3: "map", 2: "tokens", 1: "vector"}
    if len(shape) not in kinds:
        raise UserError(f"Cannot distil a feature of per-sample shape {tuple(shape)}; expected 1-3 dims.")
    return kinds[len(shape)]


def channels_first(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``[B, C, *spatial]``: maps unchanged, tokens ``[B, N, D] -> [B, D, N]``, vectors ``[B, D, 1]``."""
    if kind == "map":
        return x
    if kind == "tokens":
        return x.transpose(1, 2)
    return x.unsqueeze(-1)


def from_channels_first(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Inverse of :func:`channels_first`."""
    if kind == "map":
        return x
    if kind == "tokens":
        return x.transpose(1, 2)
    return x.squeeze(-1)


def _split_shape(shape: Sequence[int], kind: str) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) of a per-sample shape."""
    if kind == "map":
        return shape[0], tuple(shape[1:])
    if kind == "tokens":
        return shape[1], (shape[0],)
    return shape[0], (1,)


def pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Adaptive average pooling of a channels-first ``[B, C, H, W]`` or ``[B, C, L]`` tensor to ``size``
    (a no-op when it already has that size)."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.adaptive_avg_pool2d(x, size) if x.dim() == 4 else F.adaptive_avg_pool1d(x, size[0])


def resample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Channels-first ``x`` to spatial ``size``: average-pool the axes that shrink, then interpolate
    (bilinear / linear) the axes that grow."""
    size = tuple(size)
    current = tuple(x.shape[2:])
    if current == size:
        return x
    x = pool_to(x, tuple(min(a, b) for a, b in zip(current, size, strict=True)))
    if tuple(x.shape[2:]) != size:
        mode = "bilinear" if x.dim() == 4 else "linear"
        x = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return x


class Connector(nn.Module):
    """Map a student feature onto a teacher feature's layout and shape: 1x1 conv (+ BN) + resampling.

    Same layouts: ``Conv2d`` 1x1 for maps, ``Conv1d`` over the hidden size for tokens; the student map
    is average-pooled first when it is larger and interpolated after the conv when it is smaller. Mixed
    layouts (a CNN map onto ViT tokens, or back) go through a flattened ``[B, C, L]`` sequence.
    The output has the teacher feature's per-sample shape ``t_shape`` exactly.
    """

    def __init__(
        self, s_shape: Sequence[int], t_shape: Sequence[int], norm: bool = True, bias: bool = False
    ) -> None:
        super().__init__()
        self.s_shape, self.t_shape = tuple(s_shape), tuple(t_shape)
        self.s_kind, self.t_kind = feature_kind(s_shape), feature_kind(t_shape)
        s_ch, s_size = _split_shape(s_shape, self.s_kind)
        t_ch, t_size = _split_shape(t_shape, self.t_kind)
        self.as_map = self.s_kind == self.t_kind == "map"
        if self.as_map:
            self.target = t_size
        else:
            self.target = (math.prod(t_size),)
        conv = nn.Conv2d if self.as_map else nn.Conv1d
        bn = nn.BatchNorm2d if self.as_map else nn.BatchNorm1d
        self.conv = conv(s_ch, t_ch, kernel_size=1, bias=bias)
        self.bn = bn(t_ch) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_first(x, self.s_kind)
        if not self.as_map:
            x = x.flatten(2)
        shrink = tuple(min(a, b) for a, b in zip(x.shape[2:], self.target, strict=True))
        x = self.bn(self.conv(pool_to(x, shrink)))
        x = resample(x, self.target)
        if not self.as_map and self.t_kind == "map":
            x = x.unflatten(2, self.t_shape[1:])
        return x if self.as_map else from_channels_first(x, self.t_kind)
