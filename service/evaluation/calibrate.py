"""Thresholds for target false-accept rates from labelled pairs, and ``calibration.json`` for a pack.

The service merges the file into the pack's calibration at load time (``service.packs.loader``):
each point becomes a named operating point (``far=1e-3``) a request or ``FACE_THRESHOLD`` can choose.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from service.atomic_files import write_text_atomic
from service.evaluation.metrics import FarOperatingPoint, threshold_at_far
from service.evaluation.verification import far_label
from service.packs.files import PackError
from service.packs.loader import CALIBRATION_FILE, CalibrationFile, read_calibration_file, read_manifest
from service.packs.manifest import OperatingPoint

DEFAULT_CALIBRATION_FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
CREATED_BY = "face-eval calibrate"
# Ridge penalty on the slope: perfectly separated calibration data would send it to infinity.
_LOGISTIC_L2 = 1e-2
_NEWTON_STEPS = 100


def operating_point_name(far: float) -> str:
    """``far=1e-3``: the name a request uses to choose the point."""
    return f"far={far_label(far)}"


@dataclass(frozen=True)
class LogisticFit:
    """P(same person | cosine s) = 1 / (1 + exp(-(a·s + b))), fitted on the calibration pairs."""

    a: float
    b: float
    genuine_share: float  # the share of same-person pairs it was fitted on (its implicit prior)

    def probability(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        z = self.a * np.asarray(scores, dtype=np.float64) + self.b
        return np.asarray(1.0 / (1.0 + np.exp(-z)), dtype=np.float64)

    def note(self) -> str:
        return (
            "P(same person | cosine s) = 1 / (1 + exp(-(a*s + b))): a logistic fit on the calibration "
            f"pairs, of which {100 * self.genuine_share:.1f}% were same-person pairs. It is calibrated "
            "for that mix only; where same-person comparisons are rarer, the true probability is lower."
        )


def fit_match_probability(scores: npt.ArrayLike, labels: npt.ArrayLike) -> LogisticFit:
    """Maximum-likelihood logistic regression of the label on the score (Newton steps, small ridge)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise ValueError("scores and labels must be 1-D and of equal, non-zero length")
    if y.min() == y.max():
        raise ValueError("a probability fit needs both same-person and different-person pairs")
    design = np.column_stack([s, np.ones_like(s)])
    penalty = np.diag([_LOGISTIC_L2, 0.0])
    weights = np.zeros(2)
    for _ in range(_NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ weights, -500.0, 500.0)))
        gradient = design.T @ (p - y) + penalty @ weights
        hessian = design.T @ (design * (p * (1.0 - p))[:, None]) + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return LogisticFit(a=float(weights[0]), b=float(weights[1]), genuine_share=float(y.mean()))


@dataclass(frozen=True)
class CalibrationResult:
    points: tuple[FarOperatingPoint, ...]
    probability: LogisticFit | None
    pairs: int
    genuine_pairs: int
    impostor_pairs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "operating_points": {
                operating_point_name(p.target_far): {
                    "far": p.target_far,
                    "supported": p.supported,
                    "threshold": p.threshold,
                    "achieved_far": p.achieved_far,
                    "tar": p.tar,
                    "impostor_pairs_needed": p.negatives_needed,
                }
                for p in self.points
            },
            "probability": None
            if self.probability is None
            else {"a": self.probability.a, "b": self.probability.b, "note": self.probability.note()},
            "pairs": self.pairs,
            "genuine_pairs": self.genuine_pairs,
            "impostor_pairs": self.impostor_pairs,
        }

    def to_text(self) -> str:
        lines = [
            f"calibration pairs: {self.pairs} ({self.genuine_pairs} same, {self.impostor_pairs} different)",
            f"{'operating point':<16} {'threshold':>9} {'TAR':>8} {'observed FAR':>13}",
        ]
        for p in self.points:
            name = operating_point_name(p.target_far)
            if p.supported and p.threshold is not None:
                lines.append(
                    f"{name:<16} {p.threshold:>9.4f} {100 * (p.tar or 0.0):>7.2f}% "
                    f"{100 * (p.achieved_far or 0.0):>12.4f}%"
                )
            else:
                lines.append(
                    f"{name:<16} not measurable: needs {p.negatives_needed} different-person pairs, "
                    f"this set has {p.negatives} (not written)"
                )
        if self.probability is not None:
            fit = self.probability
            lines.append(f"match probability (logistic fit): a={fit.a:.3f} b={fit.b:.3f}")
            lines.append(f"  {fit.note()}")
        return "\n".join(lines)


def calibrate(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    fars: Sequence[float] = DEFAULT_CALIBRATION_FARS,
    *,
    probability: bool = False,
) -> CalibrationResult:
    """The most permissive threshold whose observed FAR is within each target (see ``threshold_at_far``)."""
    label_array = np.asarray(labels, dtype=np.bool_)
    points = tuple(threshold_at_far(scores, label_array, far) for far in fars)
    return CalibrationResult(
        points=points,
        probability=fit_match_probability(scores, label_array) if probability else None,
        pairs=int(label_array.size),
        genuine_pairs=int(label_array.sum()),
        impostor_pairs=int(label_array.size - label_array.sum()),
    )


def calibration_file(
    pack_id: str, result: CalibrationResult, source: Mapping[str, Any], *, now: datetime | None = None
) -> CalibrationFile:
    """The ``calibration.json`` content for the supported points of ``result``."""
    created = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    described = source.get("pairs_file", "labelled pairs")
    points = {
        operating_point_name(p.target_far): OperatingPoint(
            threshold=float(min(1.0, max(-1.0, p.threshold))),
            far=p.target_far,
            source=(
                f"{CREATED_BY} {created}: {described} ({result.impostor_pairs} different-person pairs, "
                f"observed FAR {100 * (p.achieved_far or 0.0):.4f}%, TAR {100 * (p.tar or 0.0):.2f}%)"
            ),
        )
        for p in result.points
        if p.supported and p.threshold is not None and math.isfinite(p.threshold)
    }
    fit = result.probability
    return CalibrationFile(
        pack_id=pack_id,
        operating_points=points,
        probability=None if fit is None else {"a": fit.a, "b": fit.b},
        probability_note="" if fit is None else fit.note(),
        source=dict(source),
        created_at=created,
        created_by=CREATED_BY,
    )


def write_calibration(pack_dir: Path, calibration: CalibrationFile) -> Path:
    """Write ``calibration.json`` beside the pack's manifest, keeping points it does not replace.

    Refuses a pack whose id differs from the one the thresholds were measured with.
    """
    manifest = read_manifest(pack_dir)
    if manifest.id != calibration.pack_id:
        raise PackError(
            f"{pack_dir} holds pack {manifest.id!r}; "
            f"these thresholds were measured with {calibration.pack_id!r}"
        )
    try:
        existing = read_calibration_file(pack_dir)
    except PackError:
        existing = None  # an unreadable old file is replaced
    if existing is not None and existing.pack_id == calibration.pack_id:
        kept_fit = calibration.probability is None and existing.probability is not None
        calibration = calibration.model_copy(
            update={
                "operating_points": {**existing.operating_points, **calibration.operating_points},
                "probability": existing.probability if kept_fit else calibration.probability,
                "probability_note": existing.probability_note if kept_fit else calibration.probability_note,
            }
        )
    text = json.dumps(calibration.model_dump(mode="json"), indent=2) + "\n"
    return write_text_atomic(pack_dir / CALIBRATION_FILE, text)
