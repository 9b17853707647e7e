"""``fitnet``: FitNets hints (Romero et al.), the baseline feature-KD method.

``L = CE + w_hint * mean((C(f_s) - f_t)^2)`` at one hint pair (student layer s, teacher layer t). The
connector ``C`` is a 1x1 convolution + BN from the student's channels to the teacher's (``Conv1d`` + BN
over the hidden size for token features), with the student map average-pooled (larger) or
interpolated (smaller) to the teacher's spatial size. ``w_hint = 100`` (``w`` in older recipes) and the
hint at the middle stage end (index 2 of stem, layer1, layer2, layer3 for the CIFAR ResNets) are
mdistiller's CIFAR defaults (``FITNET.LOSS.FEAT_WEIGHT = 100``, ``FITNET.HINT_LAYER = 2``).

``align``: ``stages`` (default) uses the middle stage end of each model; ``auto`` takes the teacher
layer with the highest knowledge quality Q (``kdcompress.probe``) and the student's middle stage end;
``manual`` needs ``teacher_layer`` and ``student_layer``. Layers given explicitly are always used.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import AliasChoices, Field

from kdcompress import losses
from kdcompress.methods.alignment import AlignmentOptions
from kdcompress.methods.base import Method, StepProgress, teacher_pass
from kdcompress.methods.registry import register
from kdcompress.models.connectors import Connector
from kdcompress.models.taps import FeatureTap, tapped_shapes


class FitNetConfig(AlignmentOptions):
    """mdistiller's CIFAR FitNet config: CE weight 1, feature weight 100, the middle stage as hint."""

    w_hint: float = Field(default=100.0, ge=0, validation_alias=AliasChoices("w_hint", "w"))
    teacher_layer: str | None = None
    student_layer: str | None = None


@register
class FitNet(Method):
    name = "fitnet"
    summary = "FitNets hint: CE + w_hint * MSE(connector(student feature), teacher feature)"
    paper = "Romero et al.: FitNets: Hints for Thin Deep Nets (ICLR 2015)"
    kind = "feature"
    Config = FitNetConfig

    @classmethod
    def resolve_config(cls, config, *, student, teacher, input_shape, data=None):
        alignment = config.pairs(
            teacher,
            student,
            input_shape,
            1,
            teacher_layers=[config.teacher_layer] if config.teacher_layer else None,
            student_layers=[config.student_layer] if config.student_layer else None,
            default="middle",
            data=data,
            method="fitnet",
        )
        resolved = config.model_copy(
            update={
                "teacher_layer": alignment.teacher_layers[0],
                "student_layer": alignment.student_layers[0],
            }
        )
        facts = {}
        if alignment.probe is not None:
            facts["teacher_layer_quality"] = round(alignment.probe.scores()[alignment.teacher_layers[0]], 4)
        return resolved, facts

    def __init__(self, student, teacher, config: FitNetConfig, example: torch.Tensor):
        super().__init__(student, teacher, config, example)
        self.teacher_layer = config.teacher_layer
        self.student_layer = config.student_layer
        s_shape = tapped_shapes(student, [self.student_layer], example)[self.student_layer]
        t_shape = tapped_shapes(teacher, [self.teacher_layer], example)[self.teacher_layer]
        self.connector = Connector(s_shape, t_shape, norm=True)
        self.__dict__["_student_tap"] = FeatureTap(student, [self.student_layer])
        self.__dict__["_teacher_tap"] = FeatureTap(teacher, [self.teacher_layer], stop_after_last=True)

    def teacher_outputs(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's hint feature (the teacher stops right after that layer); no grad."""
        tap = self._teacher_tap

        def hint() -> torch.Tensor:
            tap.run(images)
            return tap.features.pop(self.teacher_layer)

        return teacher_pass(hint)

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        with self._student_tap as tap:
            logits = self.student(images)
        feature = tap.features.pop(self.student_layer)
        hint = losses.feature_mse(self.connector(feature), teacher_out)
        return logits, {"ce": F.cross_entropy(logits, labels), "hint": self.config.w_hint * hint}

    def extra_state_for_report(self) -> dict[str, Any]:
        hint = f"{self.teacher_layer} <- {self.student_layer}"
        return {"align": self.config.align, "hint": hint, **self.report_facts}
