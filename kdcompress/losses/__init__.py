"""Distillation losses: the single place where this math lives.

Every public loss takes plain tensors and returns a scalar tensor. Before any arithmetic the inputs are
cast to the widest of float32 and the inputs' dtypes, and the result has that dtype:

- fp16, bf16 and fp32 inputs are computed in float32, so the result (and the sum of terms the training
  engine forms) is float32 and does not depend on autocast;
- fp64 inputs are computed in float64, so the losses can be compared with float64 references at
  float64 precision and checked with ``torch.autograd.gradcheck``.

Nothing here keeps state, and nothing syncs with the host.

Each loss is written once as a per-sample helper returning a ``[B]`` tensor (``_common``:
``kd_per_sample``, ``dkd_per_sample``, ``nkd_per_sample``); the public batch losses (``logits``) are the
mean of those, and :func:`sdd` (``local``) evaluates the very same helpers on every region of its local
logits. ``features`` holds the feature losses and ``relations`` DIST's Pearson relations. Import from
``kdcompress.losses``.

Loss weights (``w_ce``, LumiNet's ``alpha ** 2``) and warm-up ramps belong to the Method classes, not
to these functions. Notation follows docs/methods.md: ``p = softmax(z / T)``,
``KL(p_t || p_s) = sum_k p_t[k] (log p_t[k] - log p_s[k])``, "batchmean" = sum over classes, mean over
the batch.
"""

from kdcompress.losses.features import feature_mse
from kdcompress.losses.local import (
    LOCAL_POOLINGS,
    PYRAMID_GRID,
    SDD_BASES,
    SDD_RULES,
    LocalPooling,
    local_logits,
    sdd,
)
from kdcompress.losses.logits import dkd, kd, luminet, nkd, standardize_logits
from kdcompress.losses.relations import dist

__all__ = [
    "LOCAL_POOLINGS",
    "PYRAMID_GRID",
    "SDD_BASES",
    "SDD_RULES",
    "LocalPooling",
    "dist",
    "dkd",
    "feature_mse",
    "kd",
    "local_logits",
    "luminet",
    "nkd",
    "sdd",
    "standardize_logits",
]
