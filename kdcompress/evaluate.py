"""Top-1 / top-5 / loss of a classifier over a loader, summed across DDP processes."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.data import Loader
from kdcompress.models.modes import eval_mode
from kdcompress.runtime import Runtime, all_reduce_sum


def autocast_for(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast context for a resolved precision (``fp32`` disables it)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` means bf16 on CUDA (no loss scaling needed) and fp32 on the CPU."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: Loader, runtime: Runtime, precision: str = "fp32", *, teacher: bool = False
) -> dict[str, float]:
    """Accuracy and mean cross-entropy; sums stay on the device until the single read at the end.

    ``teacher``: feed the batches' teacher inputs (the teacher's own normalisation) instead of the
    student's."""
    totals = torch.zeros(4, dtype=torch.float64, device=runtime.device)  # loss, top1, top5, count
    with eval_mode(model):
        for batch in loader.batches():
            with autocast_for(runtime.device, precision):
                logits = model(batch.teacher_images if teacher else batch.images)
            logits = logits.float()
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hits = top == batch.labels[:, None]
            totals[0] += F.cross_entropy(logits, batch.labels, reduction="sum")
            totals[1] += hits[:, 0].sum()
            totals[2] += hits.any(dim=1).sum()
            totals[3] += batch.labels.numel()
    loss, top1, top5, count = all_reduce_sum(totals, runtime).tolist()
    count = max(count, 1.0)
    return {"top1": 100.0 * top1 / count, "top5": 100.0 * top5 / count, "loss": loss / count}
