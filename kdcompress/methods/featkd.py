"""``featkd``: logit-free feature distillation with knowledge-quality layer choice (Cooper et al., 2025).

K one-to-one pairs (student layer s_k, teacher layer t_k). Per pair, whichever feature is spatially
larger is adaptive-average-pooled to the other's size (the student *before* its projector; the teacher
inside :meth:`FeatKD.teacher_outputs`, so cached teacher features are already small), then a projector
``P_k`` -- one 1x1 convolution, no bias, no BN, default initialisation, student channels -> teacher
channels (a ``Conv1d`` over the hidden size for token features) -- maps the student feature, and

    L_feat = (1/K) * sum_k mean((P_k(f_s) - f_t)^2)      (mean over batch and elements, per pair)

with no normalisation of either side, exactly as the authors' code computes it.

``detach_head`` (default true, the paper's method): no logit loss reaches the backbone. The student's
output at its deepest distilled layer is detached on its way to the rest of the network, and the layers
after it (the head) are trained at the same time by plain cross-entropy (weight 1). With
``detach_head: false`` the CE trains the whole network ("Ours + CE" in the paper). ``w_kd`` adds
Hinton KD on the logits, ``w_kd * T^2 KL`` at ``temperature`` (the paper's "Base FKD" uses
``w_kd: 1``, T = 4, with stage-end layers and no detach); it is logged as ``loss_kd``.

Layer choice (``align``): ``stages`` (default) pairs K stage ends of each model (never the stem);
``auto`` probes the teacher (``kdcompress.probe``: the K highest-Q layers in depth order) on a
class-balanced sample of the training split and pairs them with the student's K stage ends; ``manual``
uses ``teacher_layers`` and ``student_layers``. Layers given explicitly are always used (a resumed run
keeps the layers its first run recorded in ``recipe.yaml``).

The paper's comparison set, as aliases of this one method: ``featkd --align auto`` ("Ours"),
``featkd --align stages`` ("Base FKD-LL"), ``base-fkd`` ("Base FKD": stages, CE through the backbone,
KD at T = 4), ``featkd-ce`` ("Ours + CE": Q-chosen layers, CE through the backbone).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdcompress import losses
from kdcompress.methods.alignment import AlignmentOptions
from kdcompress.methods.base import Method, StepProgress, teacher_pass
from kdcompress.methods.registry import register, register_alias
from kdcompress.models.connectors import PairLayout
from kdcompress.models.modes import eval_mode
from kdcompress.models.taps import FeatureTap, tapped_shapes


class FeatKDConfig(AlignmentOptions):
    """Defaults of the paper: K = 4 pairs, stage alignment unless asked to probe, w_feat 1, the head
    detached from the backbone, no logit loss."""

    teacher_layers: list[str] | None = None
    student_layers: list[str] | None = None
    num_pairs: int = Field(default=4, ge=1)
    w_feat: float = Field(default=1.0, ge=0)
    detach_head: bool = Field(default=True, description="CE trains only the layers after the last pair")
    w_kd: float = Field(default=0.0, ge=0, description="weight of Hinton KD on the logits (Base FKD: 1)")
    temperature: float = Field(default=4.0, gt=0, description="temperature of the w_kd term")


@register
class FeatKD(Method):
    name = "featkd"
    summary = "logit-free feature KD at K layer pairs (knowledge-quality probe with --align auto)"
    paper = "Cooper, Chen, Dwivedy, Gurari: logit-free feature KD with knowledge quality (2025)"
    family = "adamw-onecycle"  # the paper's AdamW + OneCycle, no augmentation
    kind = "feature"
    in_all = False  # its paper's method, featkd-auto, is compared instead
    Config = FeatKDConfig

    @classmethod
    def resolve_config(cls, config, *, student, teacher, input_shape, data=None):
        alignment = config.pairs(
            teacher,
            student,
            input_shape,
            config.num_pairs,
            teacher_layers=config.teacher_layers,
            student_layers=config.student_layers,
            data=data,
            method="featkd",
        )
        resolved = config.model_copy(
            update={
                "teacher_layers": alignment.teacher_layers,
                "student_layers": alignment.student_layers,
                "num_pairs": len(alignment.teacher_layers),
            }
        )
        facts = {}
        if alignment.probe is not None:
            scores = alignment.probe.scores()
            facts["teacher_layer_quality"] = {t: round(scores[t], 4) for t in alignment.teacher_layers}
        return resolved, facts

    def __init__(self, student, teacher, config: FeatKDConfig, example: torch.Tensor):
        super().__init__(student, teacher, config, example)
        self.teacher_layers = list(config.teacher_layers)
        self.student_layers = list(config.student_layers)
        s_shapes = tapped_shapes(student, self.student_layers, example)
        t_shapes = tapped_shapes(teacher, self.teacher_layers, example)
        self.pairs = [
            PairLayout(s_shapes[s], t_shapes[t])
            for s, t in zip(self.student_layers, self.teacher_layers, strict=True)
        ]
        self.projectors = nn.ModuleList(pair.projection(bias=False) for pair in self.pairs)
        deepest = self._deepest(student, self.student_layers, example)
        self.detach_layer = deepest if config.detach_head else None
        replace = {deepest: torch.Tensor.detach} if config.detach_head else None
        # Built once (not nn.Modules, so nothing is registered); hooks are attached per call only. The
        # teacher's pass stops after its deepest pair unless the KD term needs its logits.
        self.__dict__["_student_tap"] = FeatureTap(student, self.student_layers, replace=replace)
        self.__dict__["_teacher_tap"] = FeatureTap(
            teacher, self.teacher_layers, stop_after_last=config.w_kd == 0
        )

    @staticmethod
    def _deepest(model: nn.Module, names: list[str], example: torch.Tensor) -> str:
        """The student layer whose output is produced last in a forward pass."""
        tap = FeatureTap(model, names)
        with eval_mode(model), torch.no_grad():
            tap.run(example)
        return tap.order[-1] if tap.order else names[-1]

    def teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The teacher's K features pooled to each pair's common size (and, with ``w_kd``, its logits
        last); no grad, and a function of the image only (safe to cache)."""
        tap = self._teacher_tap

        def features() -> tuple[torch.Tensor, ...]:
            logits = tap.run(images)
            outputs = [
                pair.to_common(tap.features[name], "teacher")
                for pair, name in zip(self.pairs, self.teacher_layers, strict=True)
            ]
            tap.features = {}
            return (*outputs, logits) if self.config.w_kd > 0 else tuple(outputs)

        return teacher_pass(features)

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        tap = self._student_tap
        with tap:
            logits = self.student(images)
        pair_losses = [
            losses.feature_mse(projector(pair.to_common(tap.features[name], "student")), target)
            for pair, projector, name, target in zip(
                self.pairs, self.projectors, self.student_layers, teacher_out[: len(self.pairs)], strict=True
            )
        ]
        total = torch.stack(pair_losses).sum()
        tap.features = {}  # drop the references (the graph keeps what backward needs)
        cfg = self.config
        terms = {"feat": cfg.w_feat * total / len(self.pairs), "ce": F.cross_entropy(logits, labels)}
        if cfg.w_kd > 0:
            terms["kd"] = cfg.w_kd * losses.kd(logits, teacher_out[-1], cfg.temperature)
        return logits, terms

    def extra_state_for_report(self) -> dict[str, Any]:
        pairs = [f"{t} <- {s}" for t, s in zip(self.teacher_layers, self.student_layers, strict=True)]
        detached = self.detach_layer or "nowhere (CE trains the whole student)"
        return {
            "align": self.config.align,
            "layer_pairs": pairs,
            "detached_at": detached,
            **self.report_facts,
        }


register_alias(
    "featkd-auto",
    FeatKD,
    align="auto",
    summary="featkd with Q-chosen teacher layers (the paper's method)",
    in_all=True,
)
register_alias(
    "featkd-stages", FeatKD, align="stages", summary="featkd at stage ends (the paper's Base FKD-LL)"
)
register_alias(
    "base-fkd",
    FeatKD,
    align="stages",
    detach_head=False,
    w_kd=1.0,
    summary="stage-end feature KD with CE and KD through the backbone (the paper's Base FKD)",
)
register_alias(
    "featkd-ce",
    FeatKD,
    align="auto",
    detach_head=False,
    summary="featkd-auto with CE through the backbone (Ours + CE)",
)
