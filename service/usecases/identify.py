"""Identify: for every face of an image (or the one the policy chooses), the top-k enrolled subjects
at or above the threshold; or the same for an embedding a client made itself with the gallery's pack.

A client's embedding is searched as the service's own would be once it is a unit vector: any finite,
non-zero vector of the pack's size is accepted and normalized here (scaled by its largest value
first, so that no square overflows), as the service's embedder returns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.gallery.gallery import Candidate
from service.pipeline.types import EmbeddedFace, FloatArray, ImageArray
from service.settings import FacePolicy
from service.usecases.errors import EmbeddingPackMismatchError, InvalidEmbeddingError
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


@dataclass(frozen=True)
class EmbeddingQuery:
    embedding: Sequence[float]
    pack_id: str  # the pack that made the embedding: must be the gallery's
    top_k: int | None = None  # None: FACE_IDENTIFY_TOP_K
    threshold: str | None = None  # operating point name or cosine value; None: FACE_THRESHOLD


@dataclass(frozen=True)
class EmbeddingMatches:
    threshold: ResolvedThreshold
    top_k: int
    candidates: list[Candidate]  # best first; empty: unknown


def unit_query(values: Sequence[float], size: int, field: str) -> FloatArray:
    """``values`` as a float32 unit vector of ``size``, or ``InvalidEmbeddingError`` naming ``field``."""
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (size,):
        raise InvalidEmbeddingError(
            field, f"has {vector.size} values; the gallery's embeddings have {size}", "wrong_length"
        )
    if not np.isfinite(vector).all():
        raise InvalidEmbeddingError(field, "has non-finite values (NaN or infinity)", "not_finite")
    peak = float(np.abs(vector).max())
    if peak == 0.0:
        raise InvalidEmbeddingError(field, "is all zeros: it has no direction to compare", "zero_vector")
    scaled = vector / peak
    unit: FloatArray = (scaled / np.linalg.norm(scaled)).astype(np.float32)
    return unit


async def identify_embedding(
    resources: ServiceResources,
    query: EmbeddingQuery,
    *,
    embedding_field: str = "body.embedding",
    pack_field: str = "body.pack_id",
) -> EmbeddingMatches:
    """The top-k subjects for ``query``'s embedding; refusals name the fields as the caller gave them."""
    gallery = resources.gallery
    if query.pack_id != gallery.pack_id:
        raise EmbeddingPackMismatchError(pack_field, query.pack_id, gallery.pack_id)
    vector = unit_query(query.embedding, gallery.embedding_size, embedding_field)
    threshold = resources.thresholds.resolve(query.threshold)
    k = query.top_k if query.top_k is not None else resources.settings.identify_top_k
    (candidates,) = await in_worker(gallery.identify, vector[None, :], k, threshold.value)
    return EmbeddingMatches(threshold=threshold, top_k=k, candidates=list(candidates))
