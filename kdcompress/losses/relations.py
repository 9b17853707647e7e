"""Relation losses on ``[B, K]`` logits: DIST (Huang et al., NeurIPS 2022).

DIST matches *relations* between predictions rather than the predictions themselves: the Pearson
correlation between the student's and the teacher's class probabilities, once along the classes of each
sample (inter-class) and once along the batch for each class (intra-class). A correlation ignores the
scale and the offset of the two vectors it compares, which is what lets a student follow a much stronger
teacher without having to reproduce its exact probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdcompress.losses._common import check_pair, upcast

# DIST's epsilon, added to the product of the two norms in the correlation's denominator (authors' code).
_PEARSON_EPS = 1e-8


def _row_pearson(a: Tensor, b: Tensor, eps: float = _PEARSON_EPS) -> Tensor:
    """For each row ``i``: ``<a'_i, b'_i> / (|a'_i| |b'_i| + eps)`` with ``a'``, ``b'`` the rows minus
    their means, i.e. the Pearson correlation of the two rows (``[R, N]`` in, ``[R]`` out).

    A constant row has a zero centred vector, so its correlation is 0 (the ``eps`` keeps it finite); its
    gradient is finite too, since the norm's backward is defined as 0 at the zero vector."""
    a_c = a - a.mean(dim=1, keepdim=True)
    b_c = b - b.mean(dim=1, keepdim=True)
    dot = (a_c * b_c).sum(dim=1)
    return dot / (torch.linalg.vector_norm(a_c, dim=1) * torch.linalg.vector_norm(b_c, dim=1) + eps)


def dist(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """DIST: ``T^2 * (beta * L_inter + gamma * L_intra)`` with ``P = softmax(z / T)`` for both sides.

    - ``L_inter = 1 - mean_b rho(P_s[b, :], P_t[b, :])``: each sample's correlation over the classes;
    - ``L_intra = 1 - mean_k rho(P_s[:, k], P_t[:, k])``: each class's correlation over the batch;

    where ``rho(u, v) = <u - mean(u), v - mean(v)> / (|u - mean(u)| * |v - mean(v)| + 1e-8)``. The
    ``T^2`` factor is the authors' released code (the paper's pseudocode has none); it is 1 at the
    default ``T = 1``. The intra-class term depends on the whole batch (and on each device's share of it
    under DDP); for a batch of one sample it is the constant 1.

    Args:
        student_logits: ``[B, K]``.
        teacher_logits: ``[B, K]``; not detached here (a caller may need gradients through it).
        beta: weight of the inter-class term.
        gamma: weight of the intra-class term.
        temperature: ``T``, the same for teacher and student.
    """
    check_pair(student_logits, teacher_logits, 2, "dist")
    t = float(temperature)
    if not t > 0:
        raise ValueError(f"dist: temperature must be positive, got {temperature}.")
    zs, zt = upcast(student_logits, teacher_logits)
    p_s = F.softmax(zs / t, dim=1)
    p_t = F.softmax(zt / t, dim=1)
    inter = 1.0 - _row_pearson(p_s, p_t).mean()
    intra = 1.0 - _row_pearson(p_s.transpose(0, 1), p_t.transpose(0, 1)).mean()
    return (t * t) * (beta * inter + gamma * intra)
