"""PyTorch embedder -> ONNX (fp32)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from torch import nn

# torch is imported inside the functions that need it: the CLI imports this module's errors, and
# `face-export verify` / a cached `default-pack` should not pay torch's import time.

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "embedding"
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """An export step failed; the message says which and why."""


def export_onnx(
    model: nn.Module,
    *,
    input_size: tuple[int, int],
    path: Path,
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
) -> Path:
    """Export ``model`` (NCHW float32 in, one embedding tensor out) to ``path`` and check the graph.

    ``input_size`` is (width, height). The model is put in eval mode (batch norm statistics, no
    dropout) and exported on the CPU in float32 with input "input" and output "embedding".
    """
    import torch

    width, height = input_size
    model = model.eval().float().cpu()
    dummy = torch.zeros(1, 3, height, width, dtype=torch.float32)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter warns about its own deprecation; dynamo export needs onnxscript.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # Shape-dependent Python branches (e.g. dlib's zero-padded residual add) are traced as
        # constants: right here, because the chip size is fixed. The parity check runs another batch.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        # Strided slices are kept as Slice ops instead of folded: correct, and checked by parity.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    graph = onnx.load(str(path))
    try:
        onnx.checker.check_model(graph, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"exported graph {path} failed onnx.checker: {exc}") from exc
    outputs = [out.name for out in graph.graph.output]
    if outputs != [OUTPUT_NAME]:
        raise ExportError(f"{path}: the model must return one tensor (the embedding); got outputs {outputs}")
    return path
