"""Identify: for every face of an image (or the one the policy chooses), the top-k enrolled subjects
at or above the threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.gallery.gallery import Candidate
from service.pipeline.types import EmbeddedFace, ImageArray
from service.settings import FacePolicy
from service.usecases.face_work import FaceChoice, embed_all, embed_choice
from service.usecases.images import ImageInput, held_pixels
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker
from service.usecases.thresholds import ResolvedThreshold


@dataclass(frozen=True)
class IdentifyRequest:
    image: ImageInput
    top_k: int | None = None  # None: FACE_IDENTIFY_TOP_K
    largest_only: bool = False  # only the one face ``face_policy`` chooses
    face_policy: FacePolicy | None = None  # None: FACE_FACE_POLICY
    threshold: str | None = None  # operating point name or cosine value; None: FACE_THRESHOLD


@dataclass(frozen=True)
class IdentifiedFace:
    face: EmbeddedFace
    candidates: list[Candidate]  # best first; empty: unknown


@dataclass(frozen=True)
class IdentifyResult:
    threshold: ResolvedThreshold
    top_k: int
    faces: list[IdentifiedFace]


async def _chosen_only(
    resources: ServiceResources, pixels: ImageArray, policy: FacePolicy
) -> list[EmbeddedFace]:
    """The one face ``policy`` chooses, embedded (no face: an empty list)."""
    chosen = await embed_choice(resources, pixels, FaceChoice(policy))
    return [] if chosen.embedded is None else [chosen.embedded]


async def identify(resources: ServiceResources, request: IdentifyRequest) -> IdentifyResult:
    threshold = resources.thresholds.resolve(request.threshold)
    k = request.top_k if request.top_k is not None else resources.settings.identify_top_k
    policy = request.face_policy or resources.settings.face_policy
    async with held_pixels(resources, request.image) as pixels:
        faces = await (
            _chosen_only(resources, pixels, policy) if request.largest_only else embed_all(resources, pixels)
        )
    resources.metrics.faces_detected.inc(len(faces))
    found = (
        await in_worker(
            resources.gallery.identify, np.stack([face.embedding for face in faces]), k, threshold.value
        )
        if faces
        else []
    )
    return IdentifyResult(
        threshold=threshold,
        top_k=k,
        faces=[IdentifiedFace(face, list(c)) for face, c in zip(faces, found, strict=True)],
    )
