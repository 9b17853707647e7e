"""What every loss shares: input checks (shape metadata only: no host sync), the widening of dtypes, the
KL of log-probabilities, and the per-sample forms of KD, DKD and NKD that both the batch losses
(:mod:`.logits`) and SDD's per-region loss (:mod:`.local`) evaluate."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# DKD's official code removes the target class from the non-target softmax by subtracting this
# constant from the (temperature-scaled) target logit.
_DKD_MASK_OFFSET = 1000.0


def check_pair(student: Tensor, teacher: Tensor, ndim: int, what: str) -> None:
    if not (isinstance(student, Tensor) and isinstance(teacher, Tensor)):
        raise TypeError(f"{what}: student and teacher logits must be tensors.")
    if student.dim() != ndim or teacher.dim() != ndim:
        raise ValueError(
            f"{what}: expected {ndim}-D logits, got student {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)}."
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student and teacher logits differ in shape: {tuple(student.shape)} vs "
            f"{tuple(teacher.shape)}."
        )
    if not (student.is_floating_point() and teacher.is_floating_point()):
        raise TypeError(f"{what}: logits must be floating point, got {student.dtype} and {teacher.dtype}.")


def check_target(target: Tensor, batch: int, what: str, num_classes: int | None = None) -> None:
    if not isinstance(target, Tensor) or target.dim() != 1 or target.shape[0] != batch:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{what}: target must be a 1-D tensor of {batch} class indices, got {shape}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{what}: target must hold integer class indices, got {target.dtype}.")
    if num_classes is not None and num_classes < 2:
        raise ValueError(
            f"{what}: needs at least 2 classes to split target from non-target, got {num_classes}."
        )


def upcast(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both tensors in the widest of float32 and their two dtypes (see the package docstring).

    Half-precision logits are widened because softmaxes and KL sums in fp16/bf16 lose most of their
    digits; float64 is kept because narrowing it would make float64 checks (gradcheck, references
    computed in float64) meaningless.
    """
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    return student.to(dtype), teacher.to(dtype)


def kl_per_sample(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """``sum_k p_t[k] (log p_t[k] - log p_s[k])`` for each row, from log-probabilities ``[B, K]``.

    Works in log space throughout, so no log of an underflowed probability is ever taken.
    """
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)


def non_target_columns(logits: Tensor, target: Tensor) -> Tensor:
    """``[B, K]`` logits without the target column: ``[B, K - 1]``, other classes in their order.

    Uses a gather with a computed index (not boolean indexing) so the shape is static.
    """
    num_classes = logits.shape[1]
    cols = torch.arange(num_classes - 1, device=logits.device).unsqueeze(0)
    index = cols + (cols >= target.unsqueeze(1)).long()
    return logits.gather(1, index)


def kd_per_sample(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton KD per sample: ``T^2 * KL(p_t || p_s)`` with ``p = softmax(z / T)``."""
    t = float(temperature)
    log_ps = F.log_softmax(student / t, dim=1)
    log_pt = F.log_softmax(teacher / t, dim=1)
    return (t * t) * kl_per_sample(log_pt, log_ps)


def _binary_log_probs(scaled_logits: Tensor, target: Tensor, gt_mask: Tensor) -> Tensor:
    """``[log p[y], log(1 - p[y])]`` per row (``[B, 2]``) for ``p = softmax(scaled_logits)``.

    The official DKD code forms ``[p[y], sum_{k != y} p[k]]`` and takes ``torch.log`` of it, which gives
    ``-inf`` (and NaN gradients) once a probability underflows. Here both entries come from
    log-sum-exps, which is the same value computed without ever leaving log space.
    """
    log_z = torch.logsumexp(scaled_logits, dim=1)
    log_target = scaled_logits.gather(1, target.unsqueeze(1)).squeeze(1) - log_z
    log_rest = torch.logsumexp(scaled_logits.masked_fill(gt_mask, float("-inf")), dim=1) - log_z
    return torch.stack((log_target, log_rest), dim=1)


def tckd_nckd_per_sample(
    student: Tensor, teacher: Tensor, target: Tensor, temperature: float
) -> tuple[Tensor, Tensor]:
    """DKD's two parts per sample, both ``T^2``-scaled: ``(TCKD, NCKD)``.

    - TCKD: ``T^2 * KL(b_t || b_s)`` with ``b = [p[y], 1 - p[y]]``.
    - NCKD: ``T^2 * KL(q_t || q_s)`` with ``q = softmax(z / T - 1000 * onehot(y))``, i.e. the target
      removed the way the official code (mdistiller ``DKD.py``) does it.
    """
    t = float(temperature)
    gt_mask = F.one_hot(target, num_classes=student.shape[1]).to(torch.bool)
    zs = student / t
    zt = teacher / t
    tckd = kl_per_sample(_binary_log_probs(zt, target, gt_mask), _binary_log_probs(zs, target, gt_mask))
    offset = _DKD_MASK_OFFSET * gt_mask.to(zs.dtype)
    nckd = kl_per_sample(F.log_softmax(zt - offset, dim=1), F.log_softmax(zs - offset, dim=1))
    return (t * t) * tckd, (t * t) * nckd


def dkd_per_sample(
    student: Tensor, teacher: Tensor, target: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """DKD per sample: ``alpha * TCKD + beta * NCKD``."""
    tckd, nckd = tckd_nckd_per_sample(student, teacher, target, temperature)
    return alpha * tckd + beta * nckd


def nkd_per_sample(
    student: Tensor, teacher: Tensor, target: Tensor, gamma: float, temperature: float
) -> Tensor:
    """NKD per sample.

    ``-p_t[y] * log p_s[y]`` at T = 1 with ``p_t[y]`` detached, plus
    ``-gamma * T^2 * sum_{k != y} q_t[k] log q_s[k]`` where ``q = softmax(z[non-target] / T)`` is the
    temperature softmax over the non-target classes only.

    The non-target classes are selected with a mask that really excludes the target. The SDD
    repository's NKD (``SDD_nkd.py``) builds its mask as ``ones.scatter_(1, label, 1)``, which is all
    ones and so keeps the target class in the "non-target" softmax; the original NKD code
    (yzd-v/cls_KD) scatters 0 there, as done here.
    """
    t = float(temperature)
    index = target.unsqueeze(1)
    log_ps_target = F.log_softmax(student, dim=1).gather(1, index).squeeze(1)
    pt_target = F.log_softmax(teacher, dim=1).gather(1, index).squeeze(1).exp().detach()
    target_term = -pt_target * log_ps_target

    log_qs = F.log_softmax(non_target_columns(student, target) / t, dim=1)
    log_qt = F.log_softmax(non_target_columns(teacher, target) / t, dim=1)
    non_target_term = -(gamma * t * t) * (log_qt.exp() * log_qs).sum(dim=1)
    return target_term + non_target_term
