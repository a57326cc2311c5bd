"""Read dlib's DNN serialization (``.dat`` files written by ``dlib::serialize(net)``) without dlib.

The format, from dlib's ``serialize.h``, ``float_details.h`` and ``dnn/{core,layers,input,loss}.h``:

- integer: a control byte (low 4 bits: how many bytes follow, 0x80: negative, 0x70: must be zero),
  then the magnitude in little-endian bytes;
- float/double: two integers, mantissa and exponent (value = mantissa · 2**exponent; exponents
  32000/32001/32002 mean +inf/-inf/NaN);
- bool: the ASCII byte ``'0'`` or ``'1'``; string: its length (an integer), then its bytes;
- tensor (``resizable_tensor``, version 2): dims (n, k, nr, nc), then n·k·nr·nc little-endian float32;
- alias_tensor (version 1): dims only; a layer keeps all of its weights in one ``params`` tensor and
  its aliases say how that tensor is cut into filters/biases or gamma/beta.

A network nests: ``add_loss_layer`` writes its version, its loss record, then its subnetwork; each
``add_layer``/``add_tag_layer``/``add_skip_layer`` writes its version and then its subnetwork *first*.
So the file holds the loss record, one version integer per wrapper from the output down to the input,
the input-layer record, and then, in forward order, each computational layer's record followed by
its ``add_layer`` bookkeeping (flags and cached tensors). Tag and skip layers leave only their version:
the reader must be told the wrapper sequence (the architecture), which :func:`read_network` checks
against the version integers it finds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias

import numpy as np
import numpy.typing as npt

FloatArray: TypeAlias = npt.NDArray[np.float32]

_TENSOR_VERSION = 2  # raw little-endian float32 payload (version 1 used per-value dlib floats)
_ALIAS_TENSOR_VERSION = 1
_LOSS_WRAPPER_VERSION = 1
_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002
CONV_MODE = 0  # dlib::layer_mode of affine_/bn_: per channel (CONV_MODE) or per element (FC_MODE)
FC_HAS_BIAS = 0  # dlib::fc_bias_mode
_MAX_STRING = 1 << 20  # record names are short; a huge length means a corrupt file


class DlibFormatError(ValueError):
    """The bytes are not a dlib network of the expected shape (truncated, corrupt or unsupported)."""


class DlibReader:
    """Sequential reader of dlib's primitive encodings over an in-memory buffer."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def offset(self) -> int:
        return self._pos

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, count: int, what: str) -> memoryview:
        if count > self.remaining:
            raise DlibFormatError(
                f"truncated: {what} needs {count} bytes at offset {self._pos}, only {self.remaining} left"
            )
        chunk = self._data[self._pos : self._pos + count]
        self._pos += count
        return chunk

    def read_int(self, what: str) -> int:
        start = self._pos
        control = self._take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:
            raise DlibFormatError(f"{what}: invalid integer control byte 0x{control:02x} at offset {start}")
        magnitude = int.from_bytes(self._take(size, what), "little")
        return -magnitude if control & 0x80 else magnitude

    def read_count(self, what: str) -> int:
        """A non-negative integer (sizes, dimensions, lengths)."""
        start = self._pos
        value = self.read_int(what)
        if value < 0:
            raise DlibFormatError(f"{what}: negative value {value} at offset {start}")
        return value

    def read_float(self, what: str) -> float:
        start = self._pos
        if self.remaining and self._data[self._pos] & 0x70:
            # dlib's pre-2013 ASCII float encoding; no DNN file uses it.
            raise DlibFormatError(f"{what}: ASCII-encoded float at offset {start} is not supported")
        mantissa = self.read_int(f"{what} (mantissa)")
        exponent = self.read_int(f"{what} (exponent)")
        special = {_FLOAT_INF: math.inf, _FLOAT_NINF: -math.inf, _FLOAT_NAN: math.nan}
        if exponent in special:
            return special[exponent]
        try:
            return math.ldexp(float(mantissa), exponent)
        except OverflowError:
            raise DlibFormatError(f"{what}: float out of range at offset {start}") from None

    def read_bool(self, what: str) -> bool:
        start = self._pos
        byte = self._take(1, what)[0]
        if byte not in (0x30, 0x31):
            raise DlibFormatError(f"{what}: expected '0' or '1' at offset {start}, found 0x{byte:02x}")
        return byte == 0x31

    def read_string(self, what: str) -> str:
        start = self._pos
        length = self.read_count(f"{what} (length)")
        if length > _MAX_STRING:
            raise DlibFormatError(f"{what}: implausible string length {length} at offset {start}")
        raw = bytes(self._take(length, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise DlibFormatError(f"{what}: non-ASCII string at offset {start}: {raw[:32]!r}") from None

    def _read_dims(self, what: str) -> tuple[int, int, int, int]:
        n, k, nr, nc = (self.read_count(f"{what} ({dim})") for dim in ("n", "k", "nr", "nc"))
        return n, k, nr, nc

    def read_tensor(self, what: str) -> FloatArray:
        """A ``resizable_tensor``: returns a float32 array of shape (n, k, nr, nc)."""
        start = self._pos
        version = self.read_int(f"{what} (version)")
        if version != _TENSOR_VERSION:
            raise DlibFormatError(
                f"{what}: tensor version {version} at offset {start} (only {_TENSOR_VERSION} is supported)"
            )
        dims = self._read_dims(what)
        count = math.prod(dims)
        payload = self._take(4 * count, f"{what} ({count} float32 values)")
        return np.frombuffer(payload, dtype="<f4").astype(np.float32).reshape(dims)

    def read_alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        start = self._pos
        version = self.read_int(f"{what} (version)")
        if version != _ALIAS_TENSOR_VERSION:
            raise DlibFormatError(f"{what}: alias_tensor version {version} at offset {start}")
        return self._read_dims(what)


# --- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossMetricRecord:
    """``loss_metric_``: trained so that same-person descriptors lie closer than the threshold."""

    margin: float
    distance_threshold: float


@dataclass(frozen=True)
class InputRgbImageRecord:
    """``input_rgb_image_sized<NR, NC>``: tensor = (pixel − mean) / 256 per channel, R, G, B planes."""

    mean_rgb: tuple[float, float, float]
    rows: int
    cols: int


@dataclass(frozen=True)
class ConRecord:
    version: str
    num_filters: int
    kernel: tuple[int, int]  # (rows, cols)
    stride: tuple[int, int]  # (y, x)
    padding: tuple[int, int]  # (y, x)
    filters: FloatArray  # (num_filters, in_channels, rows, cols): cross-correlation kernels
    biases: FloatArray | None  # (num_filters,)


@dataclass(frozen=True)
class AffineRecord:
    """``affine_``: y = x · gamma + beta (dlib's inference-time replacement of batch norm)."""

    mode: int  # CONV_MODE: one gamma/beta per channel
    gamma: FloatArray  # shaped as dlib's alias, (1, k, 1, 1) in CONV_MODE
    beta: FloatArray


@dataclass(frozen=True)
class ReluRecord:
    pass


@dataclass(frozen=True)
class AddPrevRecord:
    """``add_prev_<tag>``: the tag is a template argument and is not written."""


@dataclass(frozen=True)
class PoolRecord:
    kind: str  # "max" or "avg"
    kernel: tuple[int, int]  # (0, 0): the whole input ("avg_pool_everything")
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class FcRecord:
    num_outputs: int
    num_inputs: int
    weights: FloatArray  # (num_inputs, num_outputs): dlib computes x @ weights
    biases: FloatArray | None  # (num_outputs,)


LayerRecord: TypeAlias = ConRecord | AffineRecord | ReluRecord | AddPrevRecord | PoolRecord | FcRecord


def _split_params(params: FloatArray, sizes: Sequence[int], what: str) -> list[FloatArray]:
    flat = params.reshape(-1)
    if flat.size != sum(sizes):
        raise DlibFormatError(f"{what}: params hold {flat.size} values, the aliases describe {sum(sizes)}")
    parts, start = [], 0
    for size in sizes:
        parts.append(flat[start : start + size])
        start += size
    return parts


def _read_multipliers(reader: DlibReader, what: str) -> None:
    # learning-rate and weight-decay multipliers (weights, then biases): training-only settings.
    for name in ("learning_rate", "weight_decay", "bias_learning_rate", "bias_weight_decay"):
        reader.read_float(f"{what} {name} multiplier")


def _read_con(reader: DlibReader, version: str) -> ConRecord:
    what = version
    params = reader.read_tensor(f"{what} params")
    num_filters = reader.read_count(f"{what} num_filters")
    kernel = (reader.read_count(f"{what} nr"), reader.read_count(f"{what} nc"))
    stride = (reader.read_count(f"{what} stride_y"), reader.read_count(f"{what} stride_x"))
    padding = (reader.read_count(f"{what} padding_y"), reader.read_count(f"{what} padding_x"))
    filter_dims = reader.read_alias_tensor(f"{what} filters")
    bias_dims = reader.read_alias_tensor(f"{what} biases")
    _read_multipliers(reader, what)
    use_bias = reader.read_bool(f"{what} use_bias") if version == "con_5" else True  # con_4: always
    if filter_dims[0] != num_filters or filter_dims[2:] != kernel:
        raise DlibFormatError(
            f"{what}: filters {filter_dims} disagree with {num_filters} filters of {kernel}"
        )
    bias_size = math.prod(bias_dims) if use_bias else 0
    filters, biases = _split_params(params, [math.prod(filter_dims), bias_size], what)
    return ConRecord(
        version=version,
        num_filters=num_filters,
        kernel=kernel,
        stride=stride,
        padding=padding,
        filters=filters.reshape(filter_dims),
        biases=biases if use_bias else None,
    )


def _read_affine(reader: DlibReader, version: str) -> AffineRecord:
    params = reader.read_tensor("affine_ params")
    gamma_dims = reader.read_alias_tensor("affine_ gamma")
    beta_dims = reader.read_alias_tensor("affine_ beta")
    mode = reader.read_int("affine_ mode")
    gamma, beta = _split_params(params, [math.prod(gamma_dims), math.prod(beta_dims)], version)
    return AffineRecord(mode=mode, gamma=gamma.reshape(gamma_dims), beta=beta.reshape(beta_dims))


def _read_pool(kind: str) -> Callable[[DlibReader, str], PoolRecord]:
    def read(reader: DlibReader, version: str) -> PoolRecord:
        kernel = (reader.read_count(f"{version} nr"), reader.read_count(f"{version} nc"))
        stride = (reader.read_count(f"{version} stride_y"), reader.read_count(f"{version} stride_x"))
        padding = (reader.read_count(f"{version} padding_y"), reader.read_count(f"{version} padding_x"))
        return PoolRecord(kind=kind, kernel=kernel, stride=stride, padding=padding)

    return read


def _read_fc(reader: DlibReader, version: str) -> FcRecord:
    num_outputs = reader.read_count("fc_ num_outputs")
    num_inputs = reader.read_count("fc_ num_inputs")
    params = reader.read_tensor("fc_ params")
    weight_dims = reader.read_alias_tensor("fc_ weights")
    bias_dims = reader.read_alias_tensor("fc_ biases")
    bias_mode = reader.read_int("fc_ bias_mode")
    _read_multipliers(reader, version)
    has_bias = bias_mode == FC_HAS_BIAS
    if math.prod(weight_dims) != num_inputs * num_outputs:
        raise DlibFormatError(f"fc_: weights {weight_dims} are not {num_inputs}×{num_outputs}")
    bias_size = math.prod(bias_dims) if has_bias else 0
    weights, biases = _split_params(params, [num_inputs * num_outputs, bias_size], version)
    return FcRecord(
        num_outputs=num_outputs,
        num_inputs=num_inputs,
        weights=weights.reshape(num_inputs, num_outputs),
        biases=biases if has_bias else None,
    )


# Readers keyed by the version string each layer writes first (dlib's own dispatch).
_LAYER_READERS: dict[str, Callable[[DlibReader, str], LayerRecord]] = {
    "con_4": _read_con,
    "con_5": _read_con,
    "affine_": _read_affine,
    "relu_": lambda reader, version: ReluRecord(),
    "add_prev_": lambda reader, version: AddPrevRecord(),
    "max_pool_2": _read_pool("max"),
    "avg_pool_2": _read_pool("avg"),
    "fc_2": _read_fc,
}


def _read_loss_metric_2(reader: DlibReader) -> LossMetricRecord:
    return LossMetricRecord(
        margin=reader.read_float("loss_metric_2 margin"),
        distance_threshold=reader.read_float("loss_metric_2 dist_thresh"),
    )


_LOSS_READERS: dict[str, Callable[[DlibReader], LossMetricRecord]] = {
    "loss_metric_2": _read_loss_metric_2,
    "loss_metric_": lambda reader: LossMetricRecord(margin=0.1, distance_threshold=0.75),  # then hard-coded
}


def _read_input_rgb_image_sized(reader: DlibReader) -> InputRgbImageRecord:
    mean = tuple(reader.read_float(f"input mean {channel}") for channel in "RGB")
    rows, cols = reader.read_count("input rows"), reader.read_count("input cols")
    return InputRgbImageRecord(mean_rgb=(mean[0], mean[1], mean[2]), rows=rows, cols=cols)


_INPUT_READERS: dict[str, Callable[[DlibReader], InputRgbImageRecord]] = {
    "input_rgb_image_sized": _read_input_rgb_image_sized,
}


def _dispatch(reader: DlibReader, known: Collection[str], what: str) -> tuple[str, int]:
    start = reader.offset
    name = reader.read_string(f"{what} type name")
    if name not in known:
        raise DlibFormatError(
            f"{what}: unsupported record {name!r} at offset {start}; supported: {', '.join(sorted(known))}"
        )
    return name, start


# --- the network ---------------------------------------------------------------------------------


class Wrapper(StrEnum):
    """How dlib wraps each layer of a network definition (``add_layer``, ``tag1``, ``skip1``...)."""

    LAYER = "add_layer"  # a computational layer: writes a record
    TAG = "add_tag_layer"  # writes only its version
    SKIP = "add_skip_layer"  # writes only its version


# Versions each wrapper may carry (newest dlib writes the highest).
_WRAPPER_VERSIONS: dict[Wrapper, frozenset[int]] = {
    Wrapper.LAYER: frozenset({1, 2}),
    Wrapper.TAG: frozenset({1}),
    Wrapper.SKIP: frozenset({1}),
}
_INPUT_LAYER_VERSIONS = frozenset({2, 3})  # the add_layer applied directly to the input layer


@dataclass(frozen=True)
class DlibNetwork:
    loss: LossMetricRecord
    input: InputRgbImageRecord
    layers: tuple[LayerRecord, ...]  # the computational layers in forward order (input side first)


def read_network(data: bytes, wrappers: Sequence[Wrapper], *, source: str = "<bytes>") -> DlibNetwork:
    """Parse a serialized ``add_loss_layer<LOSS, ...>`` network.

    ``wrappers`` lists the network's layers from the input upwards (the input layer and the loss
    excluded), as the C++ type nests them: ``Wrapper.LAYER`` for each computational layer, ``TAG`` and
    ``SKIP`` for ``tagN``/``skipN``. The first must be a computational layer (the one on the input).
    Raises :class:`DlibFormatError` naming the offset and the layer on any mismatch or truncation.
    """
    if not wrappers or wrappers[0] is not Wrapper.LAYER:
        raise ValueError("the layer on the input must be a computational layer (Wrapper.LAYER)")
    reader = DlibReader(data)
    try:
        return _read_network(reader, wrappers)
    except DlibFormatError as exc:
        raise DlibFormatError(f"{source}: {exc}") from None


def _read_network(reader: DlibReader, wrappers: Sequence[Wrapper]) -> DlibNetwork:
    version = reader.read_int("add_loss_layer version")
    if version != _LOSS_WRAPPER_VERSION:
        raise DlibFormatError(f"add_loss_layer version {version} (expected {_LOSS_WRAPPER_VERSION})")
    loss_name, _ = _dispatch(reader, _LOSS_READERS, "loss layer")
    loss = _LOSS_READERS[loss_name](reader)

    # One version per wrapper, outermost first.
    versions = [0] * len(wrappers)
    for index in reversed(range(len(wrappers))):
        wrapper, start = wrappers[index], reader.offset
        versions[index] = reader.read_int(f"layer {index} {wrapper} version")
        allowed = _INPUT_LAYER_VERSIONS if index == 0 else _WRAPPER_VERSIONS[wrapper]
        if versions[index] not in allowed:
            raise DlibFormatError(
                f"layer {index}: expected {wrapper} (version {sorted(allowed)}), found version "
                f"{versions[index]} at offset {start}: the file's architecture differs"
            )

    input_name, _ = _dispatch(reader, _INPUT_READERS, "input layer")
    input_record = _INPUT_READERS[input_name](reader)

    layers: list[LayerRecord] = []
    for index, wrapper in enumerate(wrappers):
        if wrapper is not Wrapper.LAYER:
            continue
        what = f"layer {index}"
        name, start = _dispatch(reader, _LAYER_READERS, what)
        try:
            layers.append(_LAYER_READERS[name](reader, name))
            _skip_add_layer_state(reader, versions[index], on_input=index == 0, what=f"{what} ({name})")
        except DlibFormatError as exc:
            raise DlibFormatError(f"{what} ({name} record at offset {start}): {exc}") from None
    if reader.remaining:
        raise DlibFormatError(
            f"{reader.remaining} unexpected bytes after the network at offset {reader.offset}"
        )
    return DlibNetwork(loss=loss, input=input_record, layers=tuple(layers))


def _skip_add_layer_state(reader: DlibReader, version: int, *, on_input: bool, what: str) -> None:
    # add_layer's bookkeeping after the layer record: setup/stale/disabled flags, then the cached
    # gradient and output tensors (empty in a cleaned network); none of it is a weight.
    for flag in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_disabled"):
        reader.read_bool(f"{what} {flag}")
    reader.read_tensor(f"{what} x_grad")
    reader.read_tensor(f"{what} cached_output")
    if on_input:
        reader.read_tensor(f"{what} grad_final")
        if version >= 3:
            reader.read_count(f"{what} sample_expansion_factor")
    elif version >= 2:
        reader.read_tensor(f"{what} params_grad")
