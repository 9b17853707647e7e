"""Logit-distillation losses: the single place where this math lives.

Every public loss takes plain tensors and returns a scalar tensor. Before any arithmetic the inputs are
cast to the widest of float32 and the inputs' dtypes, and the result has that dtype:

- fp16, bf16 and fp32 inputs are computed in float32, so the result (and the sum of terms the training
  engine forms) is float32 and does not depend on autocast;
- fp64 inputs are computed in float64, so the losses can be compared with float64 references at
  float64 precision and checked with ``torch.autograd.gradcheck``.

Nothing here keeps state, and nothing syncs with the host.

Each loss is written once as a private per-sample helper returning a ``[B]`` tensor (``_kd_per_sample``,
``_dkd_per_sample``, ``_nkd_per_sample``); the public batch losses are the mean of those, and
:func:`sdd` evaluates the very same helpers on every region of its local logits.

Loss weights (``w_ce``, LumiNet's ``alpha ** 2``) and warm-up ramps belong to the Method classes, not
to these functions. Notation follows docs/methods.md: ``p = softmax(z / T)``,
``KL(p_t || p_s) = sum_k p_t[k] (log p_t[k] - log p_s[k])``, "batchmean" = sum over classes, mean over
the batch.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOCAL_POOLINGS",
    "PYRAMID_GRID",
    "SDD_BASES",
    "SDD_RULES",
    "LocalPooling",
    "dkd",
    "feature_mse",
    "kd",
    "local_logits",
    "luminet",
    "nkd",
    "sdd",
]

#: Base losses :func:`sdd` can apply to each region.
SDD_BASES: tuple[str, ...] = ("kd", "dkd", "nkd")
#: Rules deciding which regions carry complementary knowledge in :func:`sdd`.
SDD_RULES: tuple[str, ...] = ("code", "paper")
#: How :func:`local_logits` pools the feature map into grids (see its docstring).
LocalPooling = Literal["pyramid", "direct"]
LOCAL_POOLINGS: tuple[str, ...] = get_args(LocalPooling)
#: The grid ``pooling="pyramid"`` pools the map to first. The SDD authors' ``SPP`` module
#: (mdistiller/models/{cifar,imagenet}/utils.py) uses 4x4 whatever M, and takes the coarser grids from it.
PYRAMID_GRID = 4

# DKD's official code removes the target class from the non-target softmax by subtracting this
# constant from the (temperature-scaled) target logit.
_DKD_MASK_OFFSET = 1000.0
# LumiNet's epsilon inside the square root of the batch variance.
_LUMINET_EPS = 1e-5


# --------------------------------------------------------------------------------------------------
# input checks (shape metadata only: no host sync)
# --------------------------------------------------------------------------------------------------


def _check_pair(student: Tensor, teacher: Tensor, ndim: int, what: str) -> None:
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


def _check_target(target: Tensor, batch: int, what: str, num_classes: int | None = None) -> None:
    if not isinstance(target, Tensor) or target.dim() != 1 or target.shape[0] != batch:
        shape = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"{what}: target must be a 1-D tensor of {batch} class indices, got {shape}.")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"{what}: target must hold integer class indices, got {target.dtype}.")
    if num_classes is not None and num_classes < 2:
        raise ValueError(
            f"{what}: needs at least 2 classes to split target from non-target, got {num_classes}."
        )


def _upcast(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both tensors in the widest of float32 and their two dtypes (see the module docstring).

    Half-precision logits are widened because softmaxes and KL sums in fp16/bf16 lose most of their
    digits; float64 is kept because narrowing it would make float64 checks (gradcheck, references
    computed in float64) meaningless.
    """
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    return student.to(dtype), teacher.to(dtype)


# --------------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------------


def _kl_per_sample(log_p_teacher: Tensor, log_p_student: Tensor) -> Tensor:
    """``sum_k p_t[k] (log p_t[k] - log p_s[k])`` for each row, from log-probabilities ``[B, K]``.

    Works in log space throughout, so no log of an underflowed probability is ever taken.
    """
    return (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)


def _non_target_columns(logits: Tensor, target: Tensor) -> Tensor:
    """``[B, K]`` logits without the target column: ``[B, K - 1]``, other classes in their order.

    Uses a gather with a computed index (not boolean indexing) so the shape is static.
    """
    num_classes = logits.shape[1]
    cols = torch.arange(num_classes - 1, device=logits.device).unsqueeze(0)
    index = cols + (cols >= target.unsqueeze(1)).long()
    return logits.gather(1, index)


# --------------------------------------------------------------------------------------------------
# per-sample losses ([B] tensors; inputs already in the computation dtype, see _upcast)
# --------------------------------------------------------------------------------------------------


def _kd_per_sample(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton KD per sample: ``T^2 * KL(p_t || p_s)`` with ``p = softmax(z / T)``."""
    t = float(temperature)
    log_ps = F.log_softmax(student / t, dim=1)
    log_pt = F.log_softmax(teacher / t, dim=1)
    return (t * t) * _kl_per_sample(log_pt, log_ps)


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


def _tckd_nckd_per_sample(
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
    tckd = _kl_per_sample(_binary_log_probs(zt, target, gt_mask), _binary_log_probs(zs, target, gt_mask))
    offset = _DKD_MASK_OFFSET * gt_mask.to(zs.dtype)
    nckd = _kl_per_sample(F.log_softmax(zt - offset, dim=1), F.log_softmax(zs - offset, dim=1))
    return (t * t) * tckd, (t * t) * nckd


def _dkd_per_sample(
    student: Tensor, teacher: Tensor, target: Tensor, alpha: float, beta: float, temperature: float
) -> Tensor:
    """DKD per sample: ``alpha * TCKD + beta * NCKD``."""
    tckd, nckd = _tckd_nckd_per_sample(student, teacher, target, temperature)
    return alpha * tckd + beta * nckd


def _nkd_per_sample(
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

    log_qs = F.log_softmax(_non_target_columns(student, target) / t, dim=1)
    log_qt = F.log_softmax(_non_target_columns(teacher, target) / t, dim=1)
    non_target_term = -(gamma * t * t) * (log_qt.exp() * log_qs).sum(dim=1)
    return target_term + non_target_term


def _standardize_over_batch(logits: Tensor, eps: float = _LUMINET_EPS) -> Tensor:
    """LumiNet's "perception": each class column standardised over the batch (biased variance)."""
    mean = logits.mean(dim=0, keepdim=True)
    var = logits.var(dim=0, unbiased=False, keepdim=True)
    return (logits - mean) / torch.sqrt(var + eps)


# --------------------------------------------------------------------------------------------------
# public batch losses
# --------------------------------------------------------------------------------------------------


def feature_mse(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """``mean((f_s - f_t)^2)`` over the batch and every element (FitNet's hint, feature KD's pair loss),
    in the widest of float32 and the inputs' dtypes. Shapes must match (project and pool first)."""
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"feature_mse: student {tuple(student_feature.shape)} and teacher "
            f"{tuple(teacher_feature.shape)} features differ in shape; project and pool them first."
        )
    student, teacher = _upcast(student_feature, teacher_feature)
    return F.mse_loss(student, teacher)


def kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``T^2 * batchmean KL(p_t || p_s)`` with ``p = softmax(z / T)``.

    Args:
        student_logits: ``[B, K]``.
        teacher_logits: ``[B, K]``; not detached here (a caller may need gradients through it).
        temperature: ``T``.
    """
    _check_pair(student_logits, teacher_logits, 2, "kd")
    return _kd_per_sample(*_upcast(student_logits, teacher_logits), temperature).mean()


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
    _check_pair(student_logits, teacher_logits, 2, "dkd")
    _check_target(target, student_logits.shape[0], "dkd", student_logits.shape[1])
    zs, zt = _upcast(student_logits, teacher_logits)
    return _dkd_per_sample(zs, zt, target.long(), alpha, beta, temperature).mean()


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
    NKD keeps it by mistake; see ``_nkd_per_sample``). Note the loss is a cross-entropy, so it is not
    zero when student equals teacher: it is then ``-p[y] log p[y] + gamma * T^2 * H(q)``.

    Args:
        student_logits, teacher_logits: ``[B, K]``, ``K >= 2``.
        target: ``[B]`` integer labels.
    """
    _check_pair(student_logits, teacher_logits, 2, "nkd")
    _check_target(target, student_logits.shape[0], "nkd", student_logits.shape[1])
    zs, zt = _upcast(student_logits, teacher_logits)
    return _nkd_per_sample(zs, zt, target.long(), gamma, temperature).mean()


def luminet(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """LumiNet: ``batchmean KL(softmax(zhat_t / T) || softmax(zhat_s / T))``, no ``T^2`` factor.

    ``zhat[b, k] = (z[b, k] - mean_b z[:, k]) / sqrt(var_b z[:, k] + 1e-5)`` (biased variance), computed
    separately for teacher and student over the batch given (per device under DDP). The ``alpha ** 2``
    weight belongs to the Method.
    """
    _check_pair(student_logits, teacher_logits, 2, "luminet")
    t = float(temperature)
    zs, zt = (_standardize_over_batch(z) for z in _upcast(student_logits, teacher_logits))
    return _kl_per_sample(F.log_softmax(zt / t, dim=1), F.log_softmax(zs / t, dim=1)).mean()


# --------------------------------------------------------------------------------------------------
# SDD
# --------------------------------------------------------------------------------------------------


def local_logits(
    feature_map: Tensor,
    classifier: Callable[[Tensor], Tensor],
    scales: Sequence[int] = (1, 2, 4),
    pooling: LocalPooling = "pyramid",
) -> Tensor:
    """SDD's multi-scale local logits: ``[B, K, N]`` with ``N = sum(s * s for s in scales)``.

    For each scale ``s`` (in the order given) the map is average-pooled to an ``s x s`` grid, the cells
    are taken row-major, and ``classifier`` is applied to every pooled vector. With the default scales
    the regions are ordered ``[1x1, 2x2 row-major, 4x4 row-major]``.

    ``pooling`` chooses how the grids are formed:

    - ``"pyramid"`` (default, the SDD authors' ``SPP`` module, which their published numbers come
      from): the map is adaptive-average-pooled to 4x4 first, and every grid is pooled from that 4x4
      grid, also when 4 is not among the scales (M = {1, 2}). So every scale must divide 4.
    - ``"direct"``: every grid is adaptive-average-pooled straight from the map; any positive scales.

    The two agree exactly when each side of the map is 1, 2 or a multiple of 4 (CIFAR's 8x8 and 4x4
    maps, MobileNetV2's 2x2 at 32x32 input: a 2x2 side is repeated to 4 and averaged back). For other
    sides, such as the 7x7 maps of ImageNet ResNets, the 4x4 windows overlap and differ in size, so
    ``"pyramid"`` weights the map's locations unequally: its 1x1 and 2x2 cells differ from the
    ``"direct"`` ones, and region 0 is then not exactly the global average (the model's ordinary
    logits). With ``"direct"`` region 0 is the global average for every map size, and for a linear
    classifier the result equals pooling the per-location logit map.

    Args:
        feature_map: ``[B, C, H, W]``, the map the model would globally pool before its head.
        classifier: any callable mapping ``[M, C]`` pooled vectors to ``[M, K]`` logits (an
            ``nn.Linear``, or a small function for heads with a norm before the fc).
        scales: positive grid sizes; divisors of 4 with ``pooling="pyramid"``.
        pooling: ``"pyramid"`` or ``"direct"``, as above.

    The output keeps the classifier's dtype (no cast), so it works under autocast.
    """
    if not isinstance(feature_map, Tensor) or feature_map.dim() != 4:
        shape = tuple(feature_map.shape) if isinstance(feature_map, Tensor) else type(feature_map).__name__
        raise ValueError(f"local_logits: feature_map must be a 4-D [B, C, H, W] tensor, got {shape}.")
    if not callable(classifier):
        raise TypeError("local_logits: classifier must be callable, mapping [M, C] vectors to [M, K] logits.")
    if pooling not in LOCAL_POOLINGS:
        raise ValueError(
            f"local_logits: unknown pooling {pooling!r}; valid choices: {', '.join(LOCAL_POOLINGS)}."
        )
    if isinstance(scales, (int, str)) or not isinstance(scales, Sequence) or len(scales) == 0:
        raise ValueError(
            f"local_logits: scales must be a non-empty sequence of positive ints, got {scales!r}."
        )
    grid_sizes = []
    for s in scales:
        try:
            size = operator.index(s)
        except TypeError:
            size = None
        if size is None or isinstance(s, bool) or size <= 0:
            raise ValueError(f"local_logits: scales must be positive ints, got {list(scales)!r}.")
        grid_sizes.append(size)
    if pooling == "pyramid" and any(PYRAMID_GRID % size for size in grid_sizes):
        raise ValueError(
            f"local_logits: pooling 'pyramid' takes every grid from a {PYRAMID_GRID}x{PYRAMID_GRID} "
            f"grid, so scales must divide {PYRAMID_GRID}, got {list(scales)!r}; use pooling 'direct' "
            "for other scales."
        )

    batch, channels = feature_map.shape[:2]
    source = F.adaptive_avg_pool2d(feature_map, PYRAMID_GRID) if pooling == "pyramid" else feature_map
    pooled = torch.cat([F.adaptive_avg_pool2d(source, s).flatten(2) for s in grid_sizes], dim=2)
    regions = pooled.shape[2]
    vectors = pooled.transpose(1, 2).reshape(batch * regions, channels)
    logits = classifier(vectors)
    if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch * regions:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"local_logits: classifier must map [{batch * regions}, {channels}] to "
            f"[{batch * regions}, K] logits, got {shape}."
        )
    return logits.reshape(batch, regions, logits.shape[1]).transpose(1, 2)


def sdd(
    student_local: Tensor,
    teacher_local: Tensor,
    target: Tensor,
    base: str = "kd",
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    gamma: float = 1.5,
    complementary_weight: float = 2.0,
    rule: str = "code",
) -> Tensor:
    """Scale Decoupled Distillation (Wei, Luo, Luo, CVPR 2024): ``(1 / (N * B)) * sum_{b,r} w_r * d_r``.

    ``d_r`` is the base loss of one region of one sample, from the same per-sample helpers as
    :func:`kd` (``base="kd"``, ``temperature``), :func:`dkd` (``"dkd"``, ``alpha``, ``beta``,
    ``temperature``) or :func:`nkd` (``"nkd"``, ``gamma``, ``temperature``), with the sample's label.

    ``w_r = complementary_weight`` for a non-global region (``r > 0``) whose teacher prediction is
    "complementary" to the teacher's global (region 0) prediction, else 1; region 0 always has
    weight 1. Like the authors' code, the weights come from the teacher's local logits only.

    - ``rule="code"`` (default, the authors' code): the teacher's local correctness against the label
      differs from its global correctness.
    - ``rule="paper"``: the teacher's local predicted class differs from its global predicted class.

    Args:
        student_local, teacher_local: ``[B, K, N]`` local logits from :func:`local_logits`, region 0
            being the global view.
        target: ``[B]`` integer labels.
    """
    if base not in SDD_BASES:
        raise ValueError(f"sdd: unknown base {base!r}; valid choices: {', '.join(SDD_BASES)}.")
    if rule not in SDD_RULES:
        raise ValueError(f"sdd: unknown rule {rule!r}; valid choices: {', '.join(SDD_RULES)}.")
    _check_pair(student_local, teacher_local, 3, "sdd")
    batch, num_classes, regions = student_local.shape
    _check_target(target, batch, "sdd", None if base == "kd" else num_classes)
    target = target.long()

    # [B, K, N] -> [N * B, K], region-major (row r * B + b is region r of sample b).
    zs, zt = (
        z.permute(2, 0, 1).reshape(regions * batch, num_classes)
        for z in _upcast(student_local, teacher_local)
    )
    labels = target.repeat(regions)
    if base == "kd":
        per_region = _kd_per_sample(zs, zt, temperature)
    elif base == "dkd":
        per_region = _dkd_per_sample(zs, zt, labels, alpha, beta, temperature)
    else:
        per_region = _nkd_per_sample(zs, zt, labels, gamma, temperature)
    per_region = per_region.reshape(regions, batch)

    with torch.no_grad():
        predicted = teacher_local.argmax(dim=1)  # [B, N]
        if rule == "code":
            correct = predicted == target.unsqueeze(1)
            complementary = correct != correct[:, :1]
        else:
            complementary = predicted != predicted[:, :1]
        weights = 1.0 + (float(complementary_weight) - 1.0) * complementary.t().to(per_region.dtype)
    return (weights * per_region).sum() / (regions * batch)
