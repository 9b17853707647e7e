"""Losses on intermediate features."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdcompress.losses._common import upcast


def feature_mse(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """``mean((f_s - f_t)^2)`` over the batch and every element (FitNet's hint, feature KD's pair loss),
    in the widest of float32 and the inputs' dtypes. Shapes must match (project and pool first)."""
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"feature_mse: student {tuple(student_feature.shape)} and teacher "
            f"{tuple(teacher_feature.shape)} features differ in shape; project and pool them first."
        )
    student, teacher = upcast(student_feature, teacher_feature)
    return F.mse_loss(student, teacher)
