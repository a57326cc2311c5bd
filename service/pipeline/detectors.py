"""The one place face detectors are built: the decoder registry, and a pack's detector on a device.

``build_detector`` picks the decoder class by ``spec.decoder.kind`` from ``DETECTORS``;
``load_detector`` also opens the pack's detector model with the runtime options. The service, the
training data tools and the template export all build their detectors here, so they decode alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

from service.packs.manifest import DetectorSpec
from service.pipeline.detect import DetectionOptions, FaceDetector
from service.pipeline.detect_retinaface import RetinaFaceDetector
from service.pipeline.detect_scrfd import ScrfdDetector
from service.pipeline.detect_yunet import YuNetDetector
from service.pipeline.runtime import RuntimeOptions, create_session
from service.pipeline.session import InferenceSession

if TYPE_CHECKING:
    from service.packs.loader import LoadedPack

DetectorFactory = Callable[[DetectorSpec, InferenceSession, DetectionOptions], FaceDetector]

# decoder kind (the manifest's ``detector.decoder.kind``) -> the detector that decodes it
DETECTORS: Mapping[str, DetectorFactory] = MappingProxyType(
    {"retinaface": RetinaFaceDetector, "scrfd": ScrfdDetector, "yunet": YuNetDetector}
)


def build_detector(spec: DetectorSpec, session: InferenceSession, options: DetectionOptions) -> FaceDetector:
    """The detector for ``spec.decoder.kind`` running on ``session`` (ValueError for an unknown kind)."""
    try:
        factory = DETECTORS[spec.decoder.kind]
    except KeyError:
        raise ValueError(
            f"no detector for decoder kind {spec.decoder.kind!r}; known: {', '.join(sorted(DETECTORS))}"
        ) from None
    return factory(spec, session, options)


def load_detector(pack: LoadedPack, runtime: RuntimeOptions, options: DetectionOptions) -> FaceDetector:
    """The pack's detector, its model opened on ``runtime``'s device."""
    return build_detector(pack.manifest.detector, create_session(pack.detector_path, runtime), options)
