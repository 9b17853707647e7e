"""kdcompress: compress image classifiers by knowledge distillation.

Importing the package registers the CIFAR KD model zoo with timm (``cifar_*`` names) and the built-in
distillation methods. The functional losses live in :mod:`kdcompress.losses`, the knowledge-quality
metric in :mod:`kdcompress.quality`.
"""

from kdcompress import methods, models  # noqa: F401  (registration side effects)

__version__ = "0.1.0"
