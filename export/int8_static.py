"""Static int8 quantization with ranges pinned to the recipe (ONNX Runtime QDQ), for SFace and RetinaFace.

ONNX Runtime measures activation ranges on calibration inputs (percentile 99.999; MinMax let rare
outliers waste the 8 bits, lower percentiles clipped too much) and writes them to its calibration
cache; each range is then rounded outward to two significant digits and the graph quantized from the
rounded cache. The rounding makes the graph a function of the recipe, not of one machine's floating
point: another CPU computes the histograms a few ulps apart and lands on the same ranges.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

logger = logging.getLogger(__name__)

PERCENTILE: Final = 99.999
SIGNIFICANT_DIGITS: Final = 2
RECIPE: Final = (
    f"onnxruntime QDQ, per-channel s8 weights, u8 activations, percentile-{PERCENTILE} ranges rounded "
    f"outward to {SIGNIFICANT_DIGITS} significant digits"
)


class _Feeds(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime ships no type hints
    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self._feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_with_pinned_ranges(
    prepared: Path, out: Path, nodes: list[str], feeds: Iterator[dict[str, np.ndarray]], work_dir: Path
) -> dict[str, Any]:
    """Quantize ``nodes`` of ``prepared`` into ``out``; the rounded ranges it used (part of its identity)."""
    measured = work_dir / "measured-ranges.json"
    _quantize(prepared, work_dir / "first-pass.onnx", nodes, measured, _Feeds(feeds))
    ranges = rounded_ranges(json.loads(measured.read_text()))
    pinned = work_dir / "ranges.json"
    pinned.write_text(json.dumps(ranges))
    _quantize(prepared, out, nodes, pinned, None)
    logger.info("quantized %d nodes into %s", len(nodes), out.name)
    return ranges


def rounded_ranges(measured: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime's calibration cache with every range widened to ``SIGNIFICANT_DIGITS`` digits."""
    data = {
        name: {
            "lowest": _round_outward(_scalar(entry["lowest"]), math.floor),
            "highest": _round_outward(_scalar(entry["highest"]), math.ceil),
            "CLS": "TensorData",
        }
        for name, entry in sorted(measured["data"].items())
    }
    return {
        "CLS": "TensorsData",
        "calibration_method": measured["calibration_method"],
        "smooth_quant": False,
        "data": data,
    }


def _round_outward(value: float, direction: Any) -> float:
    if value == 0.0 or not math.isfinite(value):
        return value
    step = 10.0 ** (math.floor(math.log10(abs(value))) - SIGNIFICANT_DIGITS + 1)
    return float(round(direction(value / step) * step, 12))


def _scalar(value: Any) -> float:
    """A range bound as the calibration cache stores it: a number or a serialized numpy scalar."""
    return float(value["data"] if isinstance(value, dict) else value)


def _quantize(
    prepared: Path, out: Path, nodes: list[str], cache: Path, reader: CalibrationDataReader | None
) -> None:
    # With the cache file present, ONNX Runtime takes its ranges; absent, it measures and writes them.
    # Its calibrator print()s progress; the build logs instead.
    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": PERCENTILE},
            calibration_cache_path=str(cache),
        )
