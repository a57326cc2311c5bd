"""Parity of an exported ONNX embedder against its PyTorch module (or another ONNX file).

Inputs are NCHW float32 arrays already normalized the way the pack declares: random pixels
pushed through the pack's normalization, and real aligned chips when a folder is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.packs.manifest import ColorOrder, PixelNormalization

if TYPE_CHECKING:
    from torch import nn

FloatArray = npt.NDArray[np.float32]

MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999
CHIP_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp")


class ParityError(RuntimeError):
    """The exported model does not reproduce the reference within tolerance."""


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    min_cosine: float
    n: int

    def summary(self) -> str:
        return f"n={self.n} max|Δ|={self.max_abs_diff:.3g} min cosine={self.min_cosine:.8f}"


def check_parity(
    model: nn.Module, onnx_path: Path, inputs: FloatArray, *, batch_size: int = 16
) -> ParityReport:
    """Run ``inputs`` (N×3×H×W, normalized) through the module and the ONNX file; compare outputs."""
    import torch  # only here: the CLI imports ParityError without loading torch

    model = model.eval().float().cpu()
    session = _cpu_session(onnx_path)
    reference: list[FloatArray] = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch_size]))
            reference.append(model(batch).numpy().astype(np.float32))
    exported = _run_session(session, inputs, batch_size)
    return compare_outputs(np.concatenate(reference), exported)


def compare_outputs(reference: FloatArray, candidate: FloatArray) -> ParityReport:
    if reference.shape != candidate.shape:
        raise ParityError(f"output shapes differ: reference {reference.shape}, exported {candidate.shape}")
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    cand = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-12)
    return ParityReport(
        max_abs_diff=float(np.max(np.abs(ref - cand))), min_cosine=float(np.min(cosine)), n=len(ref)
    )


def require_parity(
    report: ParityReport,
    *,
    what: str,
    max_abs_diff: float = MAX_ABS_DIFF,
    min_cosine: float = MIN_COSINE,
) -> ParityReport:
    """Raise ``ParityError`` unless max |Δ| <= ``max_abs_diff`` and min cosine >= ``min_cosine``."""
    if report.max_abs_diff > max_abs_diff or report.min_cosine < min_cosine:
        raise ParityError(
            f"parity failed on {what}: {report.summary()} "
            f"(limits: max|Δ| <= {max_abs_diff:g}, min cosine >= {min_cosine})"
        )
    return report


def random_inputs(
    input_size: tuple[int, int], normalization: PixelNormalization, *, n: int = 16, seed: int = 0
) -> FloatArray:
    """``n`` random uint8 RGB images of (width, height), normalized as the pack declares."""
    width, height = input_size
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)
    return normalize_chips(pixels, normalization)


def normalize_chips(chips_rgb: npt.NDArray[np.uint8], normalization: PixelNormalization) -> FloatArray:
    """N×H×W×3 RGB uint8 -> N×3×H×W float32: channel order, then ``(pixel - mean) / std``."""
    chips = chips_rgb.astype(np.float32)
    if normalization.color_order is ColorOrder.BGR:
        chips = chips[..., ::-1]
    mean = np.asarray(normalization.mean, dtype=np.float32)
    std = np.asarray(normalization.std, dtype=np.float32)
    return np.ascontiguousarray(((chips - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)


def load_chip_folder(
    folder: Path, input_size: tuple[int, int], *, limit: int | None = None
) -> npt.NDArray[np.uint8]:
    """Aligned face chips under ``folder`` (recursively) as N×H×W×3 RGB uint8, sorted by path.

    Chips of another size are resized to ``input_size`` (width, height); grey images become RGB.
    """
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in CHIP_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(CHIP_SUFFIXES)}) under {folder}")
    width, height = input_size
    chips = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"cannot decode image {path}")
        if bgr.shape[:2] != (height, width):
            bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        chips.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(chips)


def _cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _run_session(session: ort.InferenceSession, inputs: FloatArray, batch_size: int) -> FloatArray:
    model_input = session.get_inputs()[0]
    input_name = model_input.name
    if isinstance(model_input.shape[0], int):  # exported without a dynamic batch axis
        batch_size = model_input.shape[0]
    outputs = [
        session.run(None, {input_name: np.ascontiguousarray(inputs[start : start + batch_size])})[0]
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)
