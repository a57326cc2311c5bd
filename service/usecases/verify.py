"""Verify: are two faces the same person? Two images (pair), or one image against a subject.

The match decision (``similarity >= threshold``) and the pair score are made here. Embeddings are
unit norm from the embedder, so the pair score is their dot product, clamped to [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.gallery.store import Subject
from service.pipeline.types import EmbeddedFace
from service.settings import FacePolicy
from service.usecases.errors import FaceIndexOutOfRangeError, InvalidVerifyRequestError, NoFaceError
from service.usecases.face_work import FaceChoice, embed_choice
from service.usecases.gather import gather_all
from service.usecases.images import ImageInput, held_pixels
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker
from service.usecases.thresholds import ResolvedThreshold


@dataclass(frozen=True)
class FaceRequest:
    """One image to compare and which of its faces: ``index`` (largest first), else the policy's."""

    image: ImageInput
    index: int | None = None
    index_field: str = "face_index"  # the caller's name for ``index`` (errors name it)


@dataclass(frozen=True)
class VerifyRequest:
    """Pair mode: ``image_a`` and ``image_b``. Subject mode: ``image`` and ``subject_id``."""

    image_a: FaceRequest | None = None
    image_b: FaceRequest | None = None
    image: FaceRequest | None = None
    subject_id: str | None = None
    face_policy: FacePolicy | None = None  # None: FACE_FACE_POLICY
    threshold: str | None = None  # operating point name or cosine value; None: FACE_THRESHOLD


@dataclass(frozen=True)
class ComparedFace:
    face: EmbeddedFace
    index: int  # position among the image's faces, largest first
    faces_in_image: int


@dataclass(frozen=True)
class VerifyResult:
    mode: Literal["pair", "subject"]
    similarity: float
    threshold: ResolvedThreshold
    match: bool
    face_a: ComparedFace
    face_b: ComparedFace | None = None
    subject: Subject | None = None


def cosine(value: float) -> float:
    """A cosine similarity clamped to [-1, 1]: float32 dot products of unit vectors overshoot by ~1e-7."""
    return min(1.0, max(-1.0, float(value)))


async def compared_face(
    resources: ServiceResources, request: FaceRequest, policy: FacePolicy
) -> ComparedFace:
    """Detect every face (full size: indices count /v1/detect's faces), embed only the chosen one."""
    async with held_pixels(resources, request.image) as pixels:
        chosen = await embed_choice(resources, pixels, FaceChoice(policy, request.index, coarse=False))
    resources.metrics.faces_detected.inc(len(chosen.faces))
    if chosen.index is None:
        raise NoFaceError(request.image.field)
    if chosen.embedded is None:
        raise FaceIndexOutOfRangeError(
            request.index_field, chosen.index, request.image.field, len(chosen.faces)
        )
    return ComparedFace(chosen.embedded, chosen.index, len(chosen.faces))


async def verify(resources: ServiceResources, request: VerifyRequest) -> VerifyResult:
    pair_mode = request.image_a is not None or request.image_b is not None
    subject_mode = request.image is not None or request.subject_id is not None
    if pair_mode == subject_mode:
        raise InvalidVerifyRequestError("send either image_a and image_b, or image and subject_id")
    threshold = resources.thresholds.resolve(request.threshold)
    policy = request.face_policy or resources.settings.face_policy
    if request.image_a is not None and request.image_b is not None:
        return await _verify_pair(resources, request.image_a, request.image_b, policy, threshold)
    if request.image is None or request.subject_id is None:
        raise InvalidVerifyRequestError(
            "pair mode needs both image_a and image_b; subject mode needs image and subject_id"
        )
    return await _verify_subject(resources, request.image, request.subject_id, policy, threshold)


async def _verify_pair(
    resources: ServiceResources,
    first: FaceRequest,
    second: FaceRequest,
    policy: FacePolicy,
    threshold: ResolvedThreshold,
) -> VerifyResult:
    face_a, face_b = await gather_all(
        compared_face(resources, first, policy), compared_face(resources, second, policy)
    )
    similarity = cosine(np.dot(face_a.face.embedding, face_b.face.embedding))
    return VerifyResult("pair", similarity, threshold, similarity >= threshold.value, face_a, face_b)


async def _verify_subject(
    resources: ServiceResources,
    probe: FaceRequest,
    subject_id: str,
    policy: FacePolicy,
    threshold: ResolvedThreshold,
) -> VerifyResult:
    subject = await in_worker(resources.gallery.get_subject, subject_id)  # 404 before any inference
    face = await compared_face(resources, probe, policy)
    similarity = cosine(
        await in_worker(resources.gallery.verify_against_subject, face.face.embedding, subject_id)
    )
    return VerifyResult(
        "subject", similarity, threshold, similarity >= threshold.value, face, subject=subject
    )
