"""Capturing (or altering) the outputs of named modules with forward hooks.

Feature distillation and the knowledge-quality probe talk about layers by *module name* (``layer2.1``,
``blocks.7``): a layer's features are the output of that module, captured with a forward hook, so no
model is rewritten to return features. When no module returns the pre-pool features exactly (a
functional ReLU at the end of ``forward_features``), the pseudo layer :data:`FORWARD_FEATURES` captures
them by wrapping that method for the duration of the capture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from kdcompress.models.modes import eval_mode

__all__ = ["FORWARD_FEATURES", "FeatureTap", "first_tensor", "tapped_shapes"]

#: Pseudo layer name for the output of ``model.forward_features`` when no module produces it.
FORWARD_FEATURES = "forward_features"


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass once every wanted layer was captured."""


def first_tensor(output: Any) -> torch.Tensor | None:
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
        tensor = first_tensor(output)
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
    tap = FeatureTap(model, names, stop_after_last=True)
    with eval_mode(model), torch.no_grad():
        tap.run(example)
    return {name: tuple(tap.features[name].shape[1:]) for name in names}
