"""SDD's local logits and its scale-decoupled loss on them."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcompress.losses._common import (
    check_pair,
    check_target,
    dkd_per_sample,
    kd_per_sample,
    nkd_per_sample,
    upcast,
)

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
    check_pair(student_local, teacher_local, 3, "sdd")
    batch, num_classes, regions = student_local.shape
    check_target(target, batch, "sdd", None if base == "kd" else num_classes)
    target = target.long()

    # [B, K, N] -> [N * B, K], region-major (row r * B + b is region r of sample b).
    zs, zt = (
        z.permute(2, 0, 1).reshape(regions * batch, num_classes) for z in upcast(student_local, teacher_local)
    )
    labels = target.repeat(regions)
    if base == "kd":
        per_region = kd_per_sample(zs, zt, temperature)
    elif base == "dkd":
        per_region = dkd_per_sample(zs, zt, labels, alpha, beta, temperature)
    else:
        per_region = nkd_per_sample(zs, zt, labels, gamma, temperature)
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
