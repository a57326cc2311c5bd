"""RetinaFace MobileNet-0.25 with int8 FPN and SSH convolutions: the default pack's detector, ~1.4× faster.

The detector's time goes to its dense 3×3 convolutions after the backbone (FPN merges and SSH context
modules, ~60 % of a 320×240 run at one thread); its backbone is depthwise-separable with 8–64 channels,
where int8 gains nothing, and its 1×1 heads are cheap and decide scores, boxes and landmarks. So only
those dense 3×3 convolutions are quantized (``export.int8_static``; the graph is first lifted from opset
11 to 13, which per-channel quantization needs), calibrated on ``export.calibration_faces`` photos at
the coarse pass's 320. Measured on celeba_wild through the full
pipeline it changed no accuracy figure beyond noise (docs/evaluation.md); the build checks landmarks
against the fp32 graph on its calibration photos.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter
from onnxruntime.quantization.shape_inference import quant_pre_process

from export.calibration_faces import calibration_photos
from export.int8_static import RECIPE as INT8_RECIPE
from export.int8_static import quantize_with_pinned_ranges
from export.retinaface_extract import write_retinaface_onnx
from service.packs.manifest import DetectorSpec
from service.pipeline.detect import DetectionOptions
from service.pipeline.detector_io import prepare_input
from service.pipeline.detectors import build_detector
from service.pipeline.types import ImageArray

QUANTIZATION_OPSET: Final = 13
# One size (ONNX Runtime's calibrator stacks every run's activations): the coarse pass's, which settles
# most requests; faces from 30 to 120 % of the portraits' size cover the scales the 640 pass sees.
CALIBRATION_INPUT_SIZE: Final = 320
# The build refuses a graph whose landmarks move further (fraction of the face's width, mean over faces).
MAX_MEAN_LANDMARK_SHIFT: Final = 0.02


@dataclass(frozen=True)
class LandmarkShift:
    faces: int
    mean: float  # fraction of the face's width, mean over faces of the largest of its 5 landmark shifts
    max: float


def write_int8_retinaface(dest: Path, wheels_dir: Path) -> DetectorSpec:
    """Write RetinaFace with int8 FPN/SSH convolutions to ``dest``; its spec, provenance noting the check."""
    with tempfile.TemporaryDirectory(prefix="retinaface-int8-") as work:
        fp32 = Path(work) / "fp32.onnx"
        spec = write_retinaface_onnx(fp32)
        lifted = Path(work) / "opset13.onnx"
        onnx.save(version_converter.convert_version(onnx.load(str(fp32)), QUANTIZATION_OPSET), str(lifted))
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(lifted), str(prepared), skip_symbolic_shape=True)
        nodes = dense_convolutions_after_the_first(onnx.load(str(prepared)))
        photos = calibration_photos(wheels_dir)
        quantize_with_pinned_ranges(prepared, dest, nodes, _feeds(photos, spec), Path(work))
        shift = landmark_shift(spec, fp32, dest, photos)
    if shift.mean > MAX_MEAN_LANDMARK_SHIFT:
        raise ValueError(
            f"int8 RetinaFace moves landmarks by {shift.mean:.1%} of the face width on average "
            f"(limit {MAX_MEAN_LANDMARK_SHIFT:.0%}): refusing to write the pack"
        )
    notes = (
        f"{spec.provenance.notes} int8: {len(nodes)} dense 3×3 FPN/SSH convolutions ({INT8_RECIPE}), "
        "calibrated on public-domain portraits (export/calibration_faces.py); landmarks vs fp32 on "
        f"{shift.faces} calibration faces: mean {shift.mean:.2%}, max {shift.max:.2%} of the face width."
    )
    provenance = spec.provenance.model_copy(update={"notes": notes})
    return spec.model_copy(update={"file": dest.name, "provenance": provenance})


def dense_convolutions_after_the_first(model: onnx.ModelProto) -> list[str]:
    """Ungrouped 3×3 Conv nodes in graph order, the first (the stem, on raw pixels) left out."""
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    dense = [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv"
        and weights.get(node.input[1], [])[2:] == [3, 3]
        and not any(a.name == "group" and a.i != 1 for a in node.attribute)
    ]
    if len(dense) < 2:
        raise ValueError(f"expected RetinaFace's dense 3×3 convolutions, found {len(dense)}")
    return dense[1:]


def landmark_shift(spec: DetectorSpec, fp32: Path, int8: Path, photos: list[ImageArray]) -> LandmarkShift:
    """How far the int8 graph moves the largest face's landmarks, over ``photos`` (faces both find)."""
    options = DetectionOptions.for_spec(spec)
    detectors = [build_detector(spec, _session(path), options) for path in (fp32, int8)]
    shifts = []
    for photo in photos:
        found = [detector.detect(photo) for detector in detectors]
        if found[0] and found[1]:
            reference, quantized = found[0][0], found[1][0]
            distance = np.linalg.norm(reference.landmarks - quantized.landmarks, axis=1).max()
            shifts.append(float(distance) / max(reference.width, 1.0))
    if not shifts:
        raise ValueError("neither RetinaFace graph found a face in the calibration photos")
    return LandmarkShift(faces=len(shifts), mean=float(np.mean(shifts)), max=float(np.max(shifts)))


def _feeds(photos: list[ImageArray], spec: DetectorSpec) -> Iterator[dict[str, np.ndarray]]:
    for photo in photos:
        yield {spec.input_name: prepare_input(photo, spec, CALIBRATION_INPUT_SIZE).blob}


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
