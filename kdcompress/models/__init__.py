"""Models by name (timm first, plus the CIFAR KD zoo registered with timm) and their weights."""

from kdcompress.models import cifar  # noqa: F401  (registers the cifar_* architectures with timm)
from kdcompress.models.factory import build_model, count_parameters, known_architectures
from kdcompress.models.weights import load_weights, read_state_dict, resolve_weights_path

__all__ = [
    "build_model",
    "count_parameters",
    "known_architectures",
    "load_weights",
    "read_state_dict",
    "resolve_weights_path",
]
