"""Deployable files from a trained model: ONNX (exported and checked), safetensors, fp16 / int8.

``onnx``: export, onnxruntime sessions and parity checks; ``quantize``: fp16 and int8 files made by
onnxruntime's own tools; ``export``: the ``kdcompress export`` flow that ties them to a run folder. This
module holds only the choices users name on the command line, so ``--help`` stays free of torch.
"""

from typing import get_args

from kdcompress.recipe import ExportFormat, ExportPrecision, Int8Mode

FORMATS: tuple[str, ...] = get_args(ExportFormat)
PRECISIONS: tuple[str, ...] = get_args(ExportPrecision)
INT8_MODES: tuple[str, ...] = get_args(Int8Mode)
DEFAULT_MAX_DROP = 1.0  # percentage points of top-1 agreement (and of accuracy) before a warning
CALIBRATION_IMAGES = 256  # training images that calibrate static int8 ranges
VERIFY_IMAGES = 1000  # validation images a reduced-precision file is compared on
