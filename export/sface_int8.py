"""SFace with int8 pointwise convolutions and FC: the default pack's embedder, ~1.6× faster on CPU.

SFace is a MobileNet: a 3×3 convolution, 13 depthwise 3×3 + pointwise 1×1 pairs, an FC. The 8
same-width pointwise convolutions (C → C) and the FC hold most of the time and lose little at 8 bits;
quantized one at a time, the 5 channel-expanding pointwise ones (C → 2C) moved embeddings most for the
least time saved, and the depthwise ones together cost far more accuracy than speed
(docs/benchmarks.md, "Tuning"). So: ONNX Runtime static QDQ quantization (per-channel int8 weights,
uint8 activations) of those 8 convolutions and the FC, everything else fp32.

Activation ranges: ``export.int8_static`` on ``export.calibration_faces`` chips (public-domain portraits
from PyPI wheels). The pack id follows the fp32 graph, the quantized nodes and the rounded ranges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx
from onnxruntime.quantization.shape_inference import quant_pre_process

from export import sface
from export.int8_static import RECIPE as INT8_RECIPE
from export.int8_static import quantize_with_pinned_ranges
from service.pipeline.types import ImageArray

logger = logging.getLogger(__name__)

RECIPE: Final = f"{INT8_RECIPE}; same-width pointwise convolutions and the FC"
# The build refuses a graph that strays further from fp32 on the calibration chips.
MIN_COSINE_TO_FP32: Final = 0.97


@dataclass(frozen=True)
class QuantizedSFace:
    function_sha256: str  # what the pack id follows: fp32 function, recipe, quantized nodes, ranges
    quantized_nodes: list[str]
    mean_cosine: float  # to the fp32 graph on the calibration chips
    min_cosine: float

    @property
    def notes(self) -> str:
        return (
            f"int8 (ONNX Runtime QDQ): {len(self.quantized_nodes) - 1} same-width pointwise convolutions and "
            f"the FC ({INT8_RECIPE}), calibrated on public-domain portraits (export/calibration_faces.py); "
            "cosine to fp32 on the calibration chips: mean "
            f"{self.mean_cosine:.4f}, min {self.min_cosine:.4f}."
        )


def quantize_sface(
    fp32_path: Path, out_path: Path, chips: list[ImageArray], *, fp32_function_sha256: str
) -> QuantizedSFace:
    """Write ``fp32_path``'s graph, partly int8 (``nodes_to_quantize``), to ``out_path``; check it."""
    with tempfile.TemporaryDirectory(prefix="sface-int8-") as work:
        prepared = Path(work) / "prepared.onnx"  # BatchNormalization folded into the convolutions
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        nodes = nodes_to_quantize(onnx.load(str(prepared)))
        feeds = ({sface.INPUT_NAME: _nchw([chip])} for chip in chips)
        ranges = quantize_with_pinned_ranges(prepared, out_path, nodes, feeds, Path(work))
    mean_cosine, min_cosine = _cosines_to_fp32(fp32_path, out_path, chips)
    if min_cosine < MIN_COSINE_TO_FP32:
        raise ValueError(
            f"int8 SFace strays from fp32 on the calibration chips (min cosine {min_cosine:.4f} < "
            f"{MIN_COSINE_TO_FP32}): refusing to write the pack"
        )
    identity = json.dumps(
        {"fp32": fp32_function_sha256, "recipe": RECIPE, "nodes": nodes, "ranges": ranges["data"]},
        sort_keys=True,
    )
    return QuantizedSFace(
        function_sha256=hashlib.sha256(identity.encode()).hexdigest(),
        quantized_nodes=nodes,
        mean_cosine=mean_cosine,
        min_cosine=min_cosine,
    )


def nodes_to_quantize(model: onnx.ModelProto) -> list[str]:
    """The same-width pointwise convolutions (1×1, ungrouped, as many outputs as inputs) and the FC.

    The channel-expanding pointwise convolutions (C → 2C, one after each stride-2 block and the first)
    stay fp32: quantized one at a time they moved embeddings most for the least time saved.
    """
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    chosen = [
        node.name
        for node in model.graph.node
        if (node.op_type == "Conv" and _is_same_width_pointwise(node, weights.get(node.input[1], [])))
        or node.op_type == "Gemm"
    ]
    if len(chosen) < 2:
        raise ValueError(f"expected SFace's pointwise convolutions and FC, found {chosen}")
    return chosen


def _is_same_width_pointwise(node: onnx.NodeProto, weight_dims: list[int]) -> bool:
    grouped = any(a.name == "group" and a.i != 1 for a in node.attribute)
    return not grouped and weight_dims[2:] == [1, 1] and weight_dims[0] == weight_dims[1]


def _nchw(chips: list[ImageArray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(chips).astype(np.float32).transpose(0, 3, 1, 2))


def _cosines_to_fp32(fp32_path: Path, int8_path: Path, chips: list[ImageArray]) -> tuple[float, float]:
    inputs = _nchw(chips)
    outputs = [sface.embed_raw(onnx.load(str(path)), inputs) for path in (fp32_path, int8_path)]
    unit = [raw / np.linalg.norm(raw, axis=1, keepdims=True) for raw in outputs]
    cosines = np.sum(unit[0] * unit[1], axis=1)
    return float(np.mean(cosines)), float(np.min(cosines))
