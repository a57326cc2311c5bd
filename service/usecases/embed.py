"""Embed: every face of an image with its box and unit-norm embedding (the pack's size)."""

from __future__ import annotations

from dataclasses import dataclass

from service.pipeline.types import EmbeddedFace
from service.usecases.face_work import embed_all
from service.usecases.images import ImageInput, held_pixels
from service.usecases.resources import ServiceResources


@dataclass(frozen=True)
class EmbedResult:
    pack_id: str
    embedding_size: int
    faces: list[EmbeddedFace]  # largest first


async def embed_faces(resources: ServiceResources, image: ImageInput) -> EmbedResult:
    async with held_pixels(resources, image) as pixels:
        faces = await embed_all(resources, pixels)
    resources.metrics.faces_detected.inc(len(faces))
    return EmbedResult(resources.pipeline.pack_id, resources.pipeline.embedding_size, faces)
