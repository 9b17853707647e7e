"""Models by name (timm first, plus the CIFAR KD zoo registered with timm) and their weights.

Importing this package registers the ``cifar_*`` architectures with timm; every path that builds a model
goes through here, so ``timm.create_model("cifar_resnet8x4", num_classes=100)`` works after
``import kdcompress.models``.
"""

from kdcompress.models import cifar  # noqa: F401  (registers the cifar_* architectures with timm)
from kdcompress.models.cost import count_parameters
from kdcompress.models.factory import build_model, known_architectures
from kdcompress.models.weights import load_weights, read_state_dict, resolve_weights_path

__all__ = [
    "build_model",
    "count_parameters",
    "known_architectures",
    "load_weights",
    "read_state_dict",
    "resolve_weights_path",
]
