"""``blockkd``: block-wise logit distillation with stepping-stone networks (Yu et al., 2024).

Teacher and student are split into the same number n of stages plus a head
(:func:`kdcompress.models.stages.split_stages`). For i = 1..n the stepping stone

    N_i = teacher_head o T_n o ... o T_{i+1} o C_i o S_i o ... o S_1

runs the first i student stages, a connector ``C_i`` (1x1 conv + BN from the student's channels to the
teacher's at stage i, resampling spatially when the sizes differ; ``Conv1d`` + BN for ViT tokens) and the
rest of the frozen teacher. The teacher's weights never change (``requires_grad=False``, eval mode), but
its suffix runs *with* autograd so gradients reach ``C_i`` and the student prefix.

For every model M in {student, N_1..N_n} with weight ``w_student = 1``, ``w_i = 2^-(n-i)``:

    task     = sum_M w_M CE(z_M, y)
    distill  = sum_M w_M KD(z_M, z_t)                         (T^2-scaled KL, T = 4)
    cross    = KD(z_s, z_ens) + sum_i KD(z_{N_i}, z_ens),  z_ens = mean_i z_{N_i} (detached)
    L        = w_task * task + w_distill * distill + w_cross * cross     (all 1; a, b, c in the paper)

The logged terms ``task``, ``distill`` and ``cross`` are the weighted ones. Only the student is exported;
the connectors live in this method.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import AliasChoices, Field
from torch import nn

from kdcompress import losses
from kdcompress.methods.base import Method, MethodConfig, StepProgress
from kdcompress.methods.registry import register
from kdcompress.models.connectors import Connector
from kdcompress.models.modes import eval_mode
from kdcompress.models.stages import natural_stage_count, split_stages

#: Default cap on the number of stages (a ViT would otherwise give one stepping stone per block).
DEFAULT_MAX_STAGES = 4


class BlockKDConfig(MethodConfig):
    """The paper's defaults: a = b = c = 1 (here ``w_task``, ``w_distill``, ``w_cross``; recipes may still
    say ``a``, ``b``, ``c``), T = 4; ``num_stages`` defaults to the smaller natural stage count of the two
    models, at most 4."""

    num_stages: int | None = Field(default=None, ge=1)
    w_task: float = Field(default=1.0, ge=0, validation_alias=AliasChoices("w_task", "a"))
    w_distill: float = Field(default=1.0, ge=0, validation_alias=AliasChoices("w_distill", "b"))
    w_cross: float = Field(default=1.0, ge=0, validation_alias=AliasChoices("w_cross", "c"))
    temperature: float = Field(default=4.0, gt=0)


def _default_stages(student: nn.Module, teacher: nn.Module) -> int:
    return min(
        natural_stage_count(student, "student"), natural_stage_count(teacher, "teacher"), DEFAULT_MAX_STAGES
    )


@register
class BlockKD(Method):
    name = "blockkd"
    summary = "Block-KD: stepping stones (student prefix + connector + frozen teacher suffix)"
    paper = "Yu et al.: Decoupling Dark Knowledge via Block-wise Logit Distillation (2024)"
    kind = "feature"
    Config = BlockKDConfig

    @classmethod
    def resolve_config(cls, config, *, student, teacher, input_shape, data=None):
        stages = config.num_stages or _default_stages(student, teacher)
        return config.model_copy(update={"num_stages": stages}), {}

    def __init__(self, student, teacher, config: BlockKDConfig, example: torch.Tensor):
        super().__init__(student, teacher, config, example)
        n = config.num_stages
        # Splits reference the models' own modules; kept out of the module tree (no duplicate params).
        self.__dict__["s_split"] = split_stages(student, n, "student")
        self.__dict__["t_split"] = split_stages(teacher, n, "teacher")
        s_shapes = self._stage_shapes(student, self.s_split, example)
        t_shapes = self._stage_shapes(teacher, self.t_split, example)
        self.connectors = nn.ModuleList(
            Connector(s, t, norm=True) for s, t in zip(s_shapes, t_shapes, strict=True)
        )

    @staticmethod
    def _stage_shapes(model: nn.Module, split, example: torch.Tensor) -> list[tuple[int, ...]]:
        shapes = []
        with eval_mode(model), torch.no_grad():
            x = split.stem(example)
            for stage in split.stages:
                x = stage(x)
                shapes.append(tuple(x.shape[1:]))
        return shapes

    def stepping_stones(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Student logits and the logits of N_1..N_n (gradients flow through the teacher suffix)."""
        s, t = self.s_split, self.t_split
        x = s.stem(images)
        prefix_outputs = []
        for stage in s.stages:
            x = stage(x)
            prefix_outputs.append(x)
        student_logits = s.head(x)
        stones = []
        for i, feature in enumerate(prefix_outputs):
            h = self.connectors[i](feature)
            for stage in t.stages[i + 1 :]:
                h = stage(h)
            stones.append(t.head(h))
        return student_logits, stones

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        cfg = self.config
        temperature = cfg.temperature
        logits, stones = self.stepping_stones(images)
        n = len(stones)
        weighted = [(logits, 1.0)] + [(z, 2.0 ** -(n - i)) for i, z in enumerate(stones, start=1)]
        task = sum(w * F.cross_entropy(z, labels) for z, w in weighted)
        distill = sum(w * losses.kd(z, teacher_out, temperature) for z, w in weighted)
        wide = torch.promote_types(stones[0].dtype, torch.float32)  # as the losses compute (losses.py)
        ensemble = torch.stack([z.to(wide) for z in stones]).mean(0).detach()
        cross = losses.kd(logits, ensemble, temperature) + sum(
            losses.kd(z, ensemble, temperature) for z in stones
        )
        return logits, {
            "task": cfg.w_task * task,
            "distill": cfg.w_distill * distill,
            "cross": cfg.w_cross * cross,
        }

    def extra_state_for_report(self) -> dict[str, Any]:
        return {
            "stages": self.config.num_stages,
            "student_stages": [", ".join(stage.names) for stage in self.s_split.stages],
            "teacher_stages": [", ".join(stage.names) for stage in self.t_split.stages],
        }
