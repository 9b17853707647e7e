"""Batch losses on ``[B, K]`` logits: KD, DKD, NKD, LumiNet, and logit standardisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcompress.losses._common import (
    check_pair,
    check_target,
    dkd_per_sample,
    kd_per_sample,
    kl_per_sample,
    nkd_per_sample,
    upcast,
)

# LumiNet's epsilon inside the square root of the batch variance.
_LUMINET_EPS = 1e-5
# Logit standardisation's epsilon, added to the standard deviation (the authors' code).
_STANDARDIZE_EPS = 1e-7


def _standardize_over_batch(logits: Tensor, eps: float = _LUMINET_EPS) -> Tensor:
    """LumiNet's "perception": each class column standardised over the batch (biased variance)."""
    mean = logits.mean(dim=0, keepdim=True)
    var = logits.var(dim=0, unbiased=False, keepdim=True)
    return (logits - mean) / torch.sqrt(var + eps)


def standardize_logits(logits: Tensor, dim: int = 1, eps: float = _STANDARDIZE_EPS) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each sample's logits z-scored over the classes,
    ``(z - mean(z)) / (std(z) + eps)`` with the unbiased std and ``eps`` added to it, as the authors'
    code does. ``dim`` is the class axis (1 for ``[B, K]`` logits and ``[B, K, N]`` local logits).
    Computed in the widest of float32 and the input dtype, like every loss here."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError("standardize_logits: logits must be a floating-point tensor.")
    if logits.shape[dim] < 2:
        raise ValueError(
            f"standardize_logits: needs at least 2 classes on dim {dim}, got {logits.shape[dim]}."
        )
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    mean = z.mean(dim=dim, keepdim=True)
    std = z.std(dim=dim, keepdim=True)
    return (z - mean) / (std + eps)


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``T^2 * batchmean KL(p_t || p_s)`` with ``p = softmax(z / T)``.

    Args:
        student_logits: ``[B, K]``.
        teacher_logits: ``[B, K]``; not detached here (a caller may need gradients through it).
        temperature: ``T``.
    """
    check_pair(student_logits, teacher_logits, 2, "kd")
    return kd_per_sample(*upcast(student_logits, teacher_logits), temperature).mean()


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``alpha * TCKD + beta * NCKD``, each ``T^2``-scaled batchmean.

    TCKD compares the binary ``[p[y], 1 - p[y]]`` distributions; NCKD compares the softmax with the
    target removed by subtracting ``1000 * onehot(y)`` before the softmax (as the official code does).
    Computed in log space, so gradients stay finite for extreme logits. The warm-up ramp and the CE
    weight belong to the Method.

    Args:
        student_logits, teacher_logits: ``[B, K]``, ``K >= 2``.
        target: ``[B]`` integer labels.
    """
    check_pair(student_logits, teacher_logits, 2, "dkd")
    check_target(target, student_logits.shape[0], "dkd", student_logits.shape[1])
    zs, zt = upcast(student_logits, teacher_logits)
    return dkd_per_sample(zs, zt, target.long(), alpha, beta, temperature).mean()


def nkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    gamma: float = 1.5,
    temperature: float = 1.0,
) -> Tensor:
    """Normalized KD: ``mean_b[-p_t[y] log p_s[y]] - gamma * T^2 * mean_b sum_{k != y} q_t[k] log q_s[k]``.

    The target term uses ``T = 1`` and a detached ``p_t[y]``; ``q`` is the temperature softmax over
    the non-target classes only. The mask really excludes the target class (the SDD repository's
    NKD keeps it by mistake; see ``nkd_per_sample``). Note the loss is a cross-entropy, so it is not
    zero when student equals teacher: it is then ``-p[y] log p[y] + gamma * T^2 * H(q)``.

    Args:
        student_logits, teacher_logits: ``[B, K]``, ``K >= 2``.
        target: ``[B]`` integer labels.
    """
    check_pair(student_logits, teacher_logits, 2, "nkd")
    check_target(target, student_logits.shape[0], "nkd", student_logits.shape[1])
    zs, zt = upcast(student_logits, teacher_logits)
    return nkd_per_sample(zs, zt, target.long(), gamma, temperature).mean()


def luminet(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """LumiNet: ``batchmean KL(softmax(zhat_t / T) || softmax(zhat_s / T))``, no ``T^2`` factor.

    ``zhat[b, k] = (z[b, k] - mean_b z[:, k]) / sqrt(var_b z[:, k] + 1e-5)`` (biased variance), computed
    separately for teacher and student over the batch given (per device under DDP). The ``alpha ** 2``
    weight belongs to the Method.
    """
    check_pair(student_logits, teacher_logits, 2, "luminet")
    t = float(temperature)
    zs, zt = (_standardize_over_batch(z) for z in upcast(student_logits, teacher_logits))
    return kl_per_sample(F.log_softmax(zt / t, dim=1), F.log_softmax(zs / t, dim=1)).mean()
