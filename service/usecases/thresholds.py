"""Which cosine threshold a request uses: a named operating point of the pack, or a raw number."""

from __future__ import annotations

import math
from dataclasses import dataclass

from service.packs.manifest import Calibration

CUSTOM_THRESHOLD_NAME = "custom"


class ThresholdError(ValueError):
    """A threshold choice that names no operating point and is not a number in [-1, 1]."""


@dataclass(frozen=True)
class ResolvedThreshold:
    name: str  # the operating point's name ("default", "far=1e-3"), or "custom" for a raw number
    value: float


class ThresholdPolicy:
    """Resolves request choices against the pack's calibration; ``default_choice`` is FACE_THRESHOLD."""

    def __init__(self, calibration: Calibration, default_choice: str) -> None:
        self.calibration = calibration
        self.default = self._resolve(default_choice)  # raises at start-up for a bad FACE_THRESHOLD

    @property
    def names(self) -> list[str]:
        return sorted(self.calibration.operating_points)

    def resolve(self, choice: str | None) -> ResolvedThreshold:
        return self.default if choice is None or not choice.strip() else self._resolve(choice)

    def _resolve(self, choice: str) -> ResolvedThreshold:
        text = choice.strip()
        point = self.calibration.operating_points.get(text)
        if point is not None:
            return ResolvedThreshold(text, point.threshold)
        try:
            value = float(text)
        except ValueError:
            raise ThresholdError(
                f"unknown operating point {text!r}; use one of {', '.join(self.names)} or a number in [-1, 1]"
            ) from None
        if not math.isfinite(value) or not -1.0 <= value <= 1.0:
            raise ThresholdError(f"threshold {text!r} is outside the cosine range [-1, 1]")
        return ResolvedThreshold(CUSTOM_THRESHOLD_NAME, value)
