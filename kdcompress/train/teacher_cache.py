"""Teacher outputs cached per (sample, augmentation view), filled lazily on first use.

The device loader names every training input exactly by (sample index, view id), and the teacher is
frozen, so its output for that pair never changes: computing it once and reusing it is exact up to
floating-point reassociation (batch composition can change the last bits of a convolution). Storage is
one dense tensor per output, ``[num_samples * num_views, ...]``, allocated on first use in the output's
dtype, with a boolean "filled" mask. A step whose keys are all filled skips the teacher entirely; a step
with misses runs the teacher on the missing rows only. That needs one host read of the miss count per
step, a deliberate trade: the read is tiny, and skipping a teacher forward is worth far more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from kdcompress.errors import UserError


class TeacherCache:
    def __init__(self, num_samples: int, num_views: int, device: torch.device, max_bytes: float):
        self.num_views = num_views
        self.rows = num_samples * num_views
        self.device = device
        self.max_bytes = max_bytes
        self.filled = torch.zeros(self.rows, dtype=torch.bool, device=device)
        self.stores: list[torch.Tensor] | None = None
        self.spec: Any = None
        self.hits = 0
        self.lookups = 0

    def _allocate(self, leaves: list[torch.Tensor]) -> None:
        need = sum(self.rows * leaf[0].numel() * leaf.element_size() for leaf in leaves)
        if need > self.max_bytes:
            raise UserError(
                f"The teacher cache needs {need / 2**30:.1f} GiB for {self.rows:,} (sample, view) pairs; "
                "raise train.teacher_cache_gb, lower data.crop_padding, or turn off train.teacher_cache."
            )
        self.stores = [
            torch.empty((self.rows, *leaf.shape[1:]), dtype=leaf.dtype, device=self.device) for leaf in leaves
        ]

    def _write(self, keys: torch.Tensor, outputs: Any) -> None:
        leaves, spec = tree_flatten(outputs)
        if self.stores is None:
            self._allocate(leaves)
            self.spec = spec
        for store, leaf in zip(self.stores, leaves, strict=True):
            store[keys] = leaf.to(store.dtype)
        self.filled[keys] = True

    def _read(self, keys: torch.Tensor) -> Any:
        return tree_unflatten([store[keys] for store in self.stores], self.spec)

    def fetch(
        self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor, compute: Callable
    ) -> Any:
        """The teacher's outputs for this batch, computing only what the cache has not seen."""
        keys = indices * self.num_views + views
        hit = self.filled[keys]
        hits = int(hit.sum())
        self.lookups += keys.numel()
        self.hits += hits
        if hits == keys.numel():
            return self._read(keys)
        if hits == 0:
            outputs = compute(images)
            self._write(keys, outputs)
            return outputs
        miss = ~hit
        self._write(keys[miss], compute(images[miss]))
        return self._read(keys)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0
