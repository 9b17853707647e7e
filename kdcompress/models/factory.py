"""Build any timm model (the registered CIFAR zoo included) as a recipe's model section says.

A model's weights come from exactly one of three places, and the recipe names which, so the two
meanings of "pretrained" are never confused:

- ``weights`` (*exact*): a weight file, a kdcompress run / export folder, or ``pretrained`` (timm's
  weights for the named model). Every tensor loads as stored; a classifier or first conv that does not
  fit the data is an error (a teacher must already know the data's classes).
- ``init`` (*initialisation*): ``pretrained`` or a weight file, loaded by timm's own machinery, which
  re-initialises the head when the classes differ and adapts the first conv when the channels differ;
  everything else loads exactly. This is how fine-tuning and pretrained students start.
- neither: random initialisation. A teacher may only be random when the recipe says so
  (``teacher.allow_random``), and a name that carries weights (``resnet18.a1_in1k``, ``hf-hub:...``)
  is never silently built random.

:func:`build_from_spec` returns the model and a sentence saying where its weights came from, which the
run records in ``config.json`` and ``report.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
from timm.models import get_pretrained_cfg, parse_model_name
from torch import nn

from kdcompress.errors import UserError, did_you_mean
from kdcompress.models.hub import create_pretrained, names_weights
from kdcompress.models.weights import load_weights, read_state_dict, resolve_weights_path
from kdcompress.recipe import PRETRAINED


def known_architectures() -> list[str]:
    """Every architecture name timm can build here (the ``cifar_`` zoo included)."""
    return timm.list_models()


def build_model(arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model; ``num_classes`` and ``in_chans`` come from the data."""
    if not timm.is_model(arch):
        hint = did_you_mean(arch, known_architectures())
        raise UserError(f"Unknown architecture '{arch}'; `timm.list_models()` lists the valid names.{hint}")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise UserError(f"Architecture '{arch}' rejected its arguments ({exc}); check model kwargs.") from exc


def architecture_of(model: nn.Module, fallback: str) -> str:
    """The registry architecture timm built (``resnet18`` for ``resnet18.a1_in1k`` or an hf-hub repo)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return str(cfg.get("architecture") or fallback)


def input_channels(model: nn.Module) -> int | None:
    """Input channels of the model's first conv (``pretrained_cfg.first_conv``), when it can be found."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    try:
        module = model.get_submodule(name) if name else None
    except AttributeError:
        return None
    weight = getattr(module, "weight", None)
    return int(weight.shape[1]) if weight is not None and weight.dim() == 4 else None


@dataclass(frozen=True)
class _FileShapes:
    num_classes: int | None
    in_chans: int | None


def _file_shapes(arch: str, state: dict[str, Any]) -> _FileShapes:
    """The class count and input channels stored in a state dict, found by the architecture's cfg."""
    _, model_name = parse_model_name(arch)
    cfg = get_pretrained_cfg(model_name)
    classifier = getattr(cfg, "classifier", None)
    first_conv = getattr(cfg, "first_conv", None)
    head = classifier[0] if isinstance(classifier, (list, tuple)) else classifier
    stem = first_conv[0] if isinstance(first_conv, (list, tuple)) else first_conv
    head_w = state.get(f"{head}.weight") if head else None
    stem_w = state.get(f"{stem}.weight") if stem else None
    return _FileShapes(
        int(head_w.shape[0]) if head_w is not None and head_w.dim() >= 2 else None,
        int(stem_w.shape[1]) if stem_w is not None and stem_w.dim() == 4 else None,
    )


def _adapted(have: int | None, want: int, what: str) -> str:
    return f"{what} {have} -> {want}" if have is not None and have != want else ""


def _init_from_file(
    arch: str, path: str, num_classes: int, in_chans: int, kwargs: dict
) -> tuple[nn.Module, str]:
    """timm loads the file (its state dict) as pretrained weights, adapting head and first conv."""
    file = resolve_weights_path(path).resolve()
    state = read_state_dict(file)
    shapes = _file_shapes(arch, state)
    cfg = get_pretrained_cfg(parse_model_name(arch)[1])
    overlay: dict[str, Any] = {"state_dict": state}
    if shapes.num_classes is not None:
        overlay["num_classes"] = shapes.num_classes
    if shapes.in_chans is not None and cfg is not None:
        overlay["input_size"] = (shapes.in_chans, *cfg.input_size[1:])
    try:
        model = timm.create_model(
            arch,
            pretrained=True,
            pretrained_cfg_overlay=overlay,
            num_classes=num_classes,
            in_chans=in_chans,
            **kwargs,
        )
    except RuntimeError as exc:  # size mismatches beyond the head and first conv
        raise UserError(
            f"The weights in '{file}' do not fit architecture '{arch}' even with a new head and first "
            f"conv ({str(exc).splitlines()[0]}); check the architecture name."
        ) from None
    changes = [
        c
        for c in (
            _adapted(shapes.num_classes, num_classes, "classes"),
            _adapted(shapes.in_chans, in_chans, "input channels"),
        )
        if c
    ]
    note = f" (adapted: {', '.join(changes)})" if changes else ""
    return model, f"initialised from file {file}{note}"


def _init_pretrained(
    arch: str, role: str, num_classes: int, in_chans: int, kwargs: dict
) -> tuple[nn.Module, str]:
    model, weights = create_pretrained(arch, role, num_classes=num_classes, in_chans=in_chans, **kwargs)
    cfg = model.pretrained_cfg
    changes = [
        c
        for c in (
            _adapted(cfg.get("num_classes"), num_classes, "classes"),
            _adapted((cfg.get("input_size") or (None,))[0], in_chans, "input channels"),
        )
        if c
    ]
    note = f" (adapted: {', '.join(changes)})" if changes else ""
    where = weights.repo_id or weights.cached_file or arch
    return model, f"initialised from timm pretrained weights {where}{note}"


def _exact_pretrained(
    arch: str, role: str, num_classes: int, in_chans: int, kwargs: dict
) -> tuple[nn.Module, str]:
    """timm's weights for ``arch`` loaded as they are; classes and channels must already fit."""
    model, weights = create_pretrained(arch, role, **kwargs)
    have = getattr(model, "num_classes", None)
    if have is not None and have != num_classes:
        raise UserError(
            f"The pretrained {role} '{arch}' predicts {have} classes but the data has {num_classes}; "
            f"fine-tune it on this data first (`kdcompress train --model {arch} --init pretrained "
            "--data ...`) and pass that run as the teacher's weights."
        )
    channels = input_channels(model)
    if channels is not None and channels != in_chans:
        raise UserError(
            f"The pretrained {role} '{arch}' takes {channels}-channel images but the data gives {in_chans}; "
            f"add --set data.channels={channels}."
        )
    return model, f"timm pretrained weights {weights.repo_id or weights.cached_file or arch} (exact)"


def collapse_warning(model: nn.Module, arch: str, image_size: int) -> str | None:
    """A sentence when ``image_size`` is below the model's total downsampling, so that its last stages
    run on 1x1 maps (their spatial processing is wasted and accuracy suffers); None otherwise."""
    info = getattr(model, "feature_info", None)
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info or [])
    reduction = max((int(e.get("reduction", 1)) for e in entries), default=1)
    if image_size >= reduction:
        return None
    return (
        f"{arch} downsamples {reduction}x, so at {image_size}x{image_size} input its last stages run on "
        f"1x1 maps; use data.image_size={reduction} or more, or a model made for small images (cifar_*)."
    )


def _fixed_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size a model accepts (vision transformers), or None when any size works."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if not cfg.get("fixed_input_size"):
        return None
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or cfg.get("input_size", [0])[1:]
    return tuple(int(v) for v in size) if size else None


def build_from_spec(
    spec: Any, role: str, num_classes: int, in_chans: int, image_size: int | None = None
) -> tuple[nn.Module, str]:
    """The model a recipe's ``student`` / ``teacher`` section describes, and where its weights came from.

    ``spec`` has ``arch``, ``weights``, ``init``, ``kwargs`` (a :class:`kdcompress.recipe.ModelSpec`),
    and for a teacher ``allow_random``. See the module docstring for the three sources of weights. A model
    that accepts one input size only (a ViT) and was not built for ``image_size`` is a UserError saying
    which option sets it.
    """
    model, origin = _build(spec, role, num_classes, in_chans)
    fixed = _fixed_size(model)
    if image_size is not None and fixed is not None and fixed != (image_size, image_size):
        raise UserError(
            f"The {role} {spec.arch} takes {fixed[0]}x{fixed[1]} images but the data is {image_size}x"
            f"{image_size}; set {role}.kwargs.img_size={image_size} (or data.image_size={fixed[0]})."
        )
    return model, origin


def _build(spec: Any, role: str, num_classes: int, in_chans: int) -> tuple[nn.Module, str]:
    arch, kwargs = spec.arch, dict(spec.kwargs)
    for key in ("pretrained", "pretrained_cfg_overlay", "checkpoint_path", "num_classes", "in_chans"):
        if key in kwargs:
            raise UserError(
                f"{role}.kwargs.{key} is set by kdcompress; name weights with {role}.weights (exact) or "
                f"{role}.init (initialisation) instead."
            )
    init = getattr(spec, "init", None)
    if spec.weights and init:
        raise UserError(
            f"The {role} has both weights (exact) and init (adapted) set; choose one: weights to load every "
            "tensor as stored, init to start training from them with a new head where needed."
        )
    if role == "teacher" and init:
        raise UserError(
            "A teacher needs exact weights that already fit the data (--teacher-weights); to start a "
            f"teacher from other weights, fine-tune it first: `kdcompress train --model {arch} --init "
            f"{init} --data ...`."
        )
    if spec.weights == PRETRAINED:
        return _exact_pretrained(arch, role, num_classes, in_chans, kwargs)
    if spec.weights:
        model = build_model(arch, num_classes, in_chans, **kwargs) if not names_weights(arch) else None
        if model is None:
            raise UserError(
                f"'{arch}' names pretrained weights and {role}.weights names a file as well; use the plain "
                "architecture name with a weight file."
            )
        load_weights(model, spec.weights, role)
        return model, f"exact weights from {resolve_weights_path(spec.weights).resolve()}"
    if init == PRETRAINED:
        return _init_pretrained(arch, role, num_classes, in_chans, kwargs)
    if init:
        return _init_from_file(arch, init, num_classes, in_chans, kwargs)
    if names_weights(arch):
        wanted = (
            "--teacher-weights pretrained"
            if role == "teacher"
            else "--init pretrained (train) or --student-init pretrained (distill)"
        )
        raise UserError(
            f"'{arch}' names pretrained weights, but none were asked for; pass {wanted} to use them, or "
            "the plain architecture name for a random initialisation."
        )
    if role == "teacher" and not getattr(spec, "allow_random", False):
        build_model(arch, num_classes, in_chans, **kwargs)  # an unknown name is the first thing to say
        raise UserError(
            "The teacher has no weights; pass --teacher-weights FILE|RUN|pretrained (a random teacher "
            "teaches nothing; set teacher.allow_random=true for tests and speed benchmarks)."
        )
    return build_model(arch, num_classes, in_chans, **kwargs), "random initialisation"
