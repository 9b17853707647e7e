"""The CIFAR knowledge-distillation model zoo of CRD / mdistiller, registered with timm.

Importing this package registers ``cifar_resnet8`` ... ``cifar_resnet110``, ``cifar_resnet8x4``,
``cifar_resnet32x4``, ``cifar_wrn_{16,40}_{1,2}``, ``cifar_vgg{8,11,13,16,19}`` (BN),
``cifar_mobilenetv2`` (mobile_half), ``cifar_shufflev1``, ``cifar_shufflev2`` and
``cifar_resnet{18,34,50}``, so ``timm.create_model("cifar_resnet8x4", num_classes=100)`` works. Their
state-dict keys and shapes are those of the published checkpoints; models return logits only and
expose the timm interface (``forward_features``, ``forward_head``, ``get_classifier``, ``feature_info``).
"""

from kdcompress.models.cifar import zoo
from kdcompress.models.cifar._common import CIFAR100_MEAN, CIFAR100_STD, CifarNet
from kdcompress.models.cifar.zoo import CIFAR_MODELS

__all__ = ["CIFAR100_MEAN", "CIFAR100_STD", "CIFAR_MODELS", "CifarNet", "zoo"]
