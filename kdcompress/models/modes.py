"""Running a model in eval mode for a moment (a probe pass, a measurement) without losing its mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; the previous train/eval mode comes back even on an exception.

    Probes and measurements happen in the middle of training (shape probes, evaluation, FLOP counts):
    leaving a student in eval mode by accident would silently freeze its BatchNorm statistics.
    """
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
