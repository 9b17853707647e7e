"""Knowledge quality Q of a teacher layer (Cooper, Chen, Dwivedy, Gurari, 2025) and layer selection.

`knowledge_quality` follows the 9 steps of docs/feature-kd.md ("How Q is computed")
literally, quirks included, with the step-6 bug fixed (0 ln 0 = 0 instead of zeroing the row).

Why everything goes through the Gram matrix ``K = X X^T`` (float64, ``n x n``):
the probe uses n = 5,000 samples with up to D = 262,144 values each. Copying X to float64 (10 GB),
forming per-class SVDs of ``n_c x D`` matrices or an ``n x n x D`` difference tensor would not fit in
memory. Every quantity of the metric is a function of inner products only:

- cosine similarity ``|K_ij| / (||x_i|| ||x_j||)`` with ``||x_i||^2 = K_ii``;
- squared Euclidean distance ``K_ii + K_jj - 2 K_ij`` (clamped at 0 against rounding);
- the squared singular values of a class's centred rows ``H X_c`` are the eigenvalues of the centred
  class Gram block ``H K_cc H`` (``H = I - 11^T / n_c``), since ``(H X_c)(H X_c)^T = H K_cc H``.

So X is read once, in column chunks cast to float64 (float64 because distances and centred Grams are
differences of large, nearly equal numbers), and afterwards the memory is ``O(n^2)``, independent of D.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["balanced_indices", "knowledge_quality", "select_layers"]

_NORM_EPS = 1e-12  # norm used for an all-zero row in cosine similarity (as torch.nn.functional.normalize)
_ED_THRESHOLD = 0.95  # explained-variance level that defines a class's effective dimension (step 5)
_ENTROPY_LOG_BASE = math.log(5.0)  # step 7 divides by ln 5, as the authors' code does
_CHUNK_BYTES = 64 * 2**20  # float64 working set per column chunk when forming the Gram matrix


def _as_tensor(values: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
    """Accept torch tensors, numpy arrays and nested sequences alike, without copying a tensor."""
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def _gram(x: torch.Tensor) -> torch.Tensor:
    """Return ``x @ x.T`` in float64 without ever holding an ``n x D`` float64 copy of ``x``.

    The feature axis is processed in chunks cast to float64 (about 64 MiB each). Within a chunk only the
    lower block triangle is multiplied (the Gram matrix is symmetric), which saves about 40% of the
    arithmetic for large n; the upper triangle is mirrored at the end, block by block.
    """
    n, d = x.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    cols = max(1, min(d, _CHUNK_BYTES // (8 * n)))
    rows = max(256, math.ceil(n / 8))
    for c0 in range(0, d, cols):
        chunk = x[:, c0 : c0 + cols].to(torch.float64).contiguous()
        for r0 in range(0, n, rows):
            gram[r0:, r0 : r0 + rows].addmm_(chunk[r0:], chunk[r0 : r0 + rows].T)
    for r0 in range(0, n, rows):
        gram[r0 : r0 + rows, r0 + rows :] = gram[r0 + rows :, r0 : r0 + rows].T
    return gram


def _class_groups(labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Map arbitrary integer labels to 0..C-1 and list each class's row indices (classes in label order)."""
    _, inverse = torch.unique(labels, return_inverse=True)
    groups = [torch.nonzero(inverse == c).flatten() for c in range(int(inverse.max()) + 1)]
    return inverse, groups


def _cosine_terms(
    gram: torch.Tensor, norms: torch.Tensor, inverse: torch.Tensor, groups: list[torch.Tensor]
) -> tuple[float, float, float]:
    """Steps 2-3: ``(mean_c AvgIntra_c, AvgInter, mean_c MinIntra_c)`` of ``G = |U U^T|``.

    G is formed one class's rows at a time, so no second ``n x n`` matrix is alive next to K. A row whose
    norm is 0 (e.g. all-zero after ReLU) is scaled by ``_NORM_EPS`` instead of its norm, so its cosine
    similarity to every row, itself included, is 0 rather than NaN.
    """
    n_classes = len(groups)
    safe = norms.clamp_min(_NORM_EPS)
    counts = torch.tensor([len(g) for g in groups], dtype=torch.float64, device=gram.device)
    block_sums = torch.zeros(n_classes, n_classes, dtype=torch.float64, device=gram.device)
    min_intra = torch.zeros(n_classes, dtype=torch.float64, device=gram.device)
    for c, idx in enumerate(groups):
        g_rows = gram[idx].abs() / (safe[idx, None] * safe[None, :])
        block_sums[c] = torch.zeros_like(counts).index_add_(0, inverse, g_rows.sum(0))
        min_intra[c] = g_rows[:, idx].min()
    block_means = block_sums / (counts[:, None] * counts[None, :])
    off_diagonal = ~torch.eye(n_classes, dtype=torch.bool, device=gram.device)
    return (
        float(block_means.diagonal().mean()),
        float(block_means[off_diagonal].mean()),
        float(min_intra.mean()),
    )


def _class_spectrum(gram_cc: torch.Tensor) -> torch.Tensor:
    """Step 5 for one class: normalised squared singular values of the centred rows, descending.

    They are the eigenvalues of the doubly centred Gram block ``H K_cc H``. Centring subtracts numbers of
    size ``max ||x||^2``, so eigenvalues below ``n_c * eps * max ||x||^2`` are rounding noise and are set to
    exactly 0 (an SVD gives exact zeros past the rank); without this, a class of identical rows would get
    an entropy from noise. A class without variance (one sample, identical rows) has nothing to normalise
    by: its spectrum is all zeros.
    """
    centred = gram_cc - gram_cc.mean(0, keepdim=True)
    centred = centred - centred.mean(1, keepdim=True)
    eig = torch.linalg.eigvalsh((centred + centred.T) / 2).flip(0)
    rounding = len(eig) * torch.finfo(eig.dtype).eps * gram_cc.diagonal().max()
    eig = torch.where(eig > rounding, eig, 0.0)
    total = eig.sum()
    return eig / total if total > 0 else torch.zeros_like(eig)


def _effective_dimension(spectrum: torch.Tensor) -> int:
    """Step 5: smallest count k (1-based) whose cumulative normalised spectrum reaches 0.95; 0 if none."""
    reached = torch.nonzero(spectrum.cumsum(0) >= _ED_THRESHOLD)
    return int(reached[0]) + 1 if len(reached) else 0


def _truncated_entropy(spectrum: torch.Tensor, length: int) -> float:
    """Step 6: entropy of the first ``length`` spectrum values renormalised, with 0 ln 0 = 0.

    The authors' code lets 0 ln 0 turn the whole row into NaN and then 0, which silences every layer whose
    width is below the sum of class EDs; here zero entries simply contribute nothing (the fix).
    """
    head = spectrum[:length]
    total = head.sum()
    if total <= 0:
        return 0.0
    p = head[head > 0] / total
    return float(-(p * p.log()).sum())


def _min_inter_distances(
    gram: torch.Tensor, inverse: torch.Tensor, groups: list[torch.Tensor]
) -> torch.Tensor:
    """Step 8: per class, the smallest Euclidean distance from one of its rows to any other-class row."""
    sq_norms = gram.diagonal()
    out = torch.empty(len(groups), dtype=torch.float64, device=gram.device)
    for c, idx in enumerate(groups):
        other = torch.nonzero(inverse != c).flatten()
        sq_dist = sq_norms[idx, None] + sq_norms[None, other] - 2.0 * gram[idx][:, other]
        out[c] = sq_dist.min().clamp_min(0.0).sqrt()
    return out


def _validate(x: torch.Tensor, labels: torch.Tensor, n_train: int) -> None:
    """Reject inputs for which the metric is undefined, with one clear sentence each."""
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be a 1-D integer array, got shape {tuple(labels.shape)} {labels.dtype}"
        )
    if x.shape[0] != labels.shape[0]:
        raise ValueError(f"features have {x.shape[0]} samples but labels have {labels.shape[0]}")
    if x.shape[1] == 0:
        raise ValueError("features have no values per sample")
    if labels.unique().numel() < 2:
        raise ValueError("knowledge quality needs samples from at least 2 classes")
    if n_train < 1:
        raise ValueError(f"n_train must be a positive count, got {n_train}")


def knowledge_quality(
    features: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    n_train: int | None = None,
) -> dict[str, float]:
    """Knowledge quality of one layer's features: separation S, information I, efficiency E, Q = S + sqrt(IE).

    Args:
        features: ``[N, ...]`` features of N samples (torch or numpy, any real dtype), flattened per sample,
            raw (not centred). Computation stays on the tensor's device (MPS, lacking float64, uses CPU).
        labels: ``[N]`` integer class labels; at least 2 distinct classes.
        n_train: training-set size in the efficiency term; defaults to N.

    Returns:
        ``{"separation", "information", "efficiency", "quality"}`` as Python floats.

    Edge cases the spec leaves open: all-zero rows have cosine 0 to everything (see `_cosine_terms`); a
    class without variance has ED 0 and entropy 0; if every row is zero, E is 0; ``sqrt(I * E)`` is
    taken of ``max(I * E, 0)`` so rounding can never produce NaN.
    """
    x = _as_tensor(features).detach()  # a metric, never part of a graph
    x = x.reshape(x.shape[0], -1)
    if x.device.type == "mps":
        x = x.cpu()
    labels_t = _as_tensor(labels).to(x.device)
    n_train = x.shape[0] if n_train is None else n_train
    _validate(x, labels_t, n_train)
    n, d = x.shape

    gram = _gram(x)
    norms = gram.diagonal().clamp_min(0.0).sqrt()
    inverse, groups = _class_groups(labels_t)

    # Steps 2-4: separation.
    avg_intra, avg_inter, min_intra = _cosine_terms(gram, norms, inverse, groups)
    separation = avg_intra - avg_inter

    # Steps 5-7: information.
    width = max(len(g) for g in groups)
    spectra = []
    for idx in groups:
        spectrum = _class_spectrum(gram[idx][:, idx])
        spectra.append(torch.nn.functional.pad(spectrum, (0, width - len(spectrum))))
    length = min(sum(_effective_dimension(s) for s in spectra), width)
    mean_entropy = sum(_truncated_entropy(s, length) for s in spectra) / len(spectra)
    information = (1.0 - min_intra) * mean_entropy / _ENTROPY_LOG_BASE

    # Step 8: efficiency.
    d_eff = min(n, d)
    mean_norm = float(torch.stack([norms[idx].mean() for idx in groups]).mean())
    mean_min_dist = float(_min_inter_distances(gram, inverse, groups).mean())
    ratio = 2.0 * mean_min_dist / mean_norm if mean_norm > 0 else 0.0
    efficiency = (n_train / math.pi) ** (1.0 / d_eff) * ratio

    # Step 9.
    quality = separation + math.sqrt(max(information * efficiency, 0.0))
    return {
        "separation": float(separation),
        "information": float(information),
        "efficiency": float(efficiency),
        "quality": float(quality),
    }


def select_layers(scores: Mapping[str, float], k: int) -> list[str]:
    """The K layers feature KD should distil: the k highest-Q layers, returned in depth order.

    ``scores`` maps layer name -> Q in depth order (shallow first). Among equal scores the shallower layer
    wins, so the choice is deterministic. The result is in depth order because the chosen teacher layers are
    mapped one-to-one, in order, onto the student's stage-end layers.
    """
    names = list(scores)
    if not 1 <= k <= len(names):
        raise ValueError(
            f"cannot select {k} layers from {len(names)} scored layers; k must be in 1..{len(names)}"
        )
    values = [float(scores[name]) for name in names]
    if any(math.isnan(v) for v in values):
        bad = [name for name, v in zip(names, values, strict=True) if math.isnan(v)]
        raise ValueError(f"knowledge quality is NaN for layer(s) {', '.join(bad)}")
    ranked = sorted(range(len(names)), key=lambda i: (-values[i], i))
    return [names[i] for i in sorted(ranked[:k])]


def balanced_indices(
    labels: torch.Tensor | np.ndarray | Sequence[int], n_samples: int, seed: int = 0
) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset of ``n_samples`` samples (the probe sample).

    Each class gets the same count as far as the data allows: a class with too few samples gives all it
    has and the shortfall is shared among the others; a remainder that cannot be split evenly goes to
    classes drawn at random. Asking for more samples than exist returns every index. The same labels and
    seed always give the same subset (a private generator; the global RNG is untouched).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive count, got {n_samples}")
    labels_t = _as_tensor(labels).flatten().cpu()
    if labels_t.numel() == 0:
        raise ValueError("labels are empty")
    generator = torch.Generator().manual_seed(seed)
    _, groups = _class_groups(labels_t)
    available = [len(g) for g in groups]
    quota = [0] * len(groups)
    remaining = min(n_samples, labels_t.numel())
    while remaining > 0:
        open_classes = [c for c in range(len(groups)) if quota[c] < available[c]]
        share = remaining // len(open_classes)
        if share == 0:
            order = torch.randperm(len(open_classes), generator=generator)[:remaining]
            for i in order.tolist():
                quota[open_classes[i]] += 1
            break
        for c in open_classes:
            take = min(share, available[c] - quota[c])
            quota[c] += take
            remaining -= take
    picked = [g[torch.randperm(len(g), generator=generator)[:q]] for g, q in zip(groups, quota, strict=True)]
    return torch.cat(picked).sort().values.long()
