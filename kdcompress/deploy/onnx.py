"""ONNX files: exported from PyTorch, run by onnxruntime, and checked against PyTorch.

The exporter writes one self-contained file (no external data) with a dynamic batch axis named
``batch``, at exactly the opset asked for: torch's dynamo exporter for opset 18 and later (it works at
18 and converts upwards), the TorchScript exporter below 18 (the dynamo exporter's down-conversion
fails for common graphs and then silently keeps 18) and at every opset on torch older than 2.6. A file
is only trusted once its opset is the one asked for and onnxruntime reproduces PyTorch's logits within
:data:`ONNX_TOLERANCE` of their scale (:func:`logit_error`); every file is written under a temporary
name and renamed into place.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcompress import checkpoint
from kdcompress.errors import UserError
from kdcompress.models.cost import Latency, time_calls

ONNX_TOLERANCE = 1e-4


class VerificationError(UserError):
    """The exported model does not reproduce PyTorch; the files are not trustworthy."""


DYNAMO_MIN_OPSET = 18  # the dynamo exporter's native opset
#: ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter) arrived in torch 2.6; older torch
#: has the TorchScript exporter only, whose ``export`` takes no ``dynamo`` argument at all.
HAS_DYNAMO_EXPORTER = torch.__version__ >= "2.6"


def max_opset() -> int:
    """The newest opset this onnx package knows."""
    import onnx

    return int(onnx.defs.onnx_opset_version())


def file_opset(path: Path) -> int:
    """The default-domain opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


#: The ``metadata_props`` key holding the model's whole ``config.json`` (so the file describes itself).
CONFIG_KEY = "kdcompress.config"


def describe(config: dict[str, Any]) -> dict[str, str]:
    """The ``metadata_props`` of an exported file: its ``config.json`` whole, and the input spec, classes
    and versions under plain keys for tools that do not know kdcompress."""
    from kdcompress import __version__

    cfg = config.get("pretrained_cfg", {})
    names = config.get("kdcompress", {}).get("class_names") or []
    props = {
        CONFIG_KEY: json.dumps(config),
        "kdcompress_version": __version__,
        "architecture": str(config.get("architecture", "")),
        "num_classes": str(config.get("num_classes", "")),
        "input_size": json.dumps(cfg.get("input_size")),
        "mean": json.dumps(cfg.get("mean")),
        "std": json.dumps(cfg.get("std")),
        "interpolation": str(cfg.get("interpolation", "")),
        "crop_pct": json.dumps(cfg.get("crop_pct")),
        "class_names": json.dumps(names),
    }
    return props


def read_metadata(path: Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` as a dict (empty when it has none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def config_from_metadata(path: Path) -> dict[str, Any] | None:
    """The ``config.json`` an exported file carries, or None for ONNX files made elsewhere."""
    text = read_metadata(path).get(CONFIG_KEY)
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _stamp(model: Any, metadata: dict[str, str] | None) -> Any:
    """Set ``metadata`` on an ``onnx.ModelProto`` (replacing earlier values of the same keys)."""
    if metadata:
        kept = [p for p in model.metadata_props if p.key not in metadata]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    return model


def export_onnx(
    model: nn.Module,
    input_size: tuple[int, int, int],
    path: Path,
    opset: int,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Export ``model`` to one ONNX file at ``opset`` with a dynamic batch axis named ``batch``, carrying
    ``metadata`` in its ``metadata_props``."""
    if not 11 <= opset <= max_opset():
        raise UserError(f"ONNX opset {opset} is not available; use an opset from 11 to {max_opset()}.")
    model = model.eval()
    example = torch.randn(2, *input_size)
    # The exporters narrate each stage at INFO level; users want the result, not the play-by-play.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)

    def write(tmp: Path) -> None:
        common = {"input_names": ["input"], "output_names": ["logits"], "opset_version": opset}
        if opset >= DYNAMO_MIN_OPSET and HAS_DYNAMO_EXPORTER:
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamic_shapes=({0: batch},),
                dynamo=True,
                external_data=False,
                verbose=False,
                **common,
            )
        else:
            legacy = {"dynamo": False} if HAS_DYNAMO_EXPORTER else {}  # newer torch defaults to dynamo
            torch.onnx.export(
                model, (example,), str(tmp), dynamic_axes={"input": {0: "batch"}}, **legacy, **common
            )
        written = file_opset(tmp)
        if written != opset:
            raise UserError(
                f"The exporter wrote opset {written} instead of {opset} for this model; "
                f"use --opset {written}."
            )
        if metadata:
            import onnx

            onnx.save_model(_stamp(onnx.load(str(tmp)), metadata), str(tmp))

    checkpoint.atomic_write(path, write)
    return path


def save_onnx(model: Any, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Save an ``onnx.ModelProto`` as one file, atomically, with ``metadata`` added to its props."""
    import onnx

    stamped = _stamp(model, metadata)
    checkpoint.atomic_write(path, lambda tmp: onnx.save_model(stamped, str(tmp)))


def onnx_session(path: Path, providers: list | None = None, threads: int | None = None):
    """An onnxruntime session (CPU unless ``providers`` says otherwise), quiet below errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_latency(session: Any, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30) -> Latency:
    """Inference latency of an onnxruntime session on ``inputs`` (host arrays in and out)."""
    feed = {session.get_inputs()[0].name: inputs.cpu().numpy()}
    return time_calls(lambda: session.run(None, feed), warmup, repeats)


def logit_error(session: Any, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest logit difference between onnxruntime and PyTorch on ``inputs``, over the larger of 1 and
    the largest |logit|. Summation order alone moves a float32 logit by about 1e-7 of its size, so a
    deep student whose logits reach 20 drifts past a fixed 1e-4 (a MobileNetV3 after FitNet: 1.3e-4)
    while a real export error (a wrong op, layout or constant) moves logits by a sizeable part of
    their scale. Logits below 1 keep the plain absolute bar."""
    with torch.inference_mode():
        expected = model.eval()(inputs).float().numpy()
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    return float(np.abs(got - expected).max() / max(1.0, float(np.abs(expected).max())))


def verify_parity(path: Path, model: nn.Module, checks: dict[str, torch.Tensor]) -> dict[str, float]:
    """onnxruntime against PyTorch on each named input batch; a VerificationError beyond tolerance."""
    try:
        session = onnx_session(path)
    except Exception as exc:  # onnxruntime raises its own exception types for models it cannot run
        import onnxruntime

        raise VerificationError(
            f"onnxruntime {onnxruntime.__version__} cannot run the exported opset-{file_opset(path)} file "
            f"({type(exc).__name__}); try an older --opset (18 is the default)."
        ) from None
    parity = {name: logit_error(session, model, inputs) for name, inputs in checks.items()}
    worst = max(parity.values())
    if worst > ONNX_TOLERANCE:
        raise VerificationError(
            f"The ONNX model differs from PyTorch by {worst:.2e} of its logit scale (> {ONNX_TOLERANCE:.0e}) "
            f"on {max(parity, key=parity.get)} inputs; try another --opset."
        )
    return parity


class OnnxRuntimeModel(nn.Module):
    """An exported ONNX file (fp32, fp16 or int8) behind the ``nn.Module`` call interface, so the same
    evaluation code measures the file a user ships. It runs on the CPU through onnxruntime; inputs and
    outputs are float32 tensors, whatever precision the file computes in."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.__dict__["session"] = onnx_session(self.path)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: images.detach().float().cpu().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0]).float().to(images.device)

    def parameter_count(self) -> int:
        """Values stored in the file's initializers (the weights), as ``count_parameters`` would say."""
        import onnx

        graph = onnx.load(str(self.path), load_external_data=False).graph
        return sum(int(np.prod(tensor.dims)) for tensor in graph.initializer)
