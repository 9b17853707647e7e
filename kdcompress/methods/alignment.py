"""Which teacher layer is distilled into which student layer, for the feature methods (featkd, fitnet).

Layers given explicitly always win (this is also how a resumed run keeps the layers its first run chose,
from its recorded recipe). Missing ones come from the ``align`` mode:

- ``manual``: none may be missing.
- ``stages``: the last ``k`` stage ends of each model (FitNet: the middle stage end, ``k == 1``).
- ``auto``: the teacher's ``k`` highest-Q layers from the knowledge-quality probe on the training data
  (:func:`kdcompress.probe.layers.probe_layers`); the student's side as for ``stages``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import Field
from torch import nn

from kdcompress.errors import UserError
from kdcompress.methods.base import MethodConfig
from kdcompress.models.layers import (
    check_layer_names,
    layers_past_stem,
    middle_stage_layer,
    stage_end_layers,
)
from kdcompress.probe.layers import ProbeResult, cached_probe

if TYPE_CHECKING:
    from kdcompress.data import DataBundle


class AlignmentOptions(MethodConfig):
    """The options every feature method shares: how layers are paired, and how the probe runs."""

    align: Literal["auto", "manual", "stages"] = "stages"
    probe_samples: int = Field(default=5000, ge=2, description="class-balanced samples for align: auto")
    probe_device: str = Field(default="auto", description="where the align: auto probe runs")
    cache_teacher_features: bool = Field(
        default=False, description="compute each (sample, view)'s teacher features once and reuse them"
    )

    def pairs(
        self,
        teacher: nn.Module,
        student: nn.Module,
        input_shape: Sequence[int],
        k: int,
        **given: object,
    ) -> Alignment:
        """:func:`align_layers` with this config's mode and probe settings."""
        return align_layers(
            self.align,
            teacher,
            student,
            input_shape,
            k,
            probe_samples=self.probe_samples,
            probe_device=self.probe_device,
            **given,  # type: ignore[arg-type]
        )


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

    if s_names is None and default != "middle":
        capacity = layers_past_stem(student, input_shape)
        if capacity < k:  # a shallow student: as many pairs as it has layers past its stem
            warnings.warn(
                f"{method}: the student has {capacity} layers past its stem, so {capacity} layer pairs are "
                f"distilled instead of {k} (set method.num_pairs={capacity} to say so).",
                stacklevel=2,
            )
            k = capacity
    probe = None
    if t_names is None:
        if mode == "auto":
            if data is None:
                raise UserError(f"--align auto for {method} needs the training data to probe the teacher.")
            probe = cached_probe(
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
