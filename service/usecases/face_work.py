"""Face work the use cases share: ONE recipe for "detect, choose a face, align, embed", and all faces.

The chosen-face recipe (``locate_chosen`` + ``embed_aligned``, or ``embed_choice`` for both) serves
verify (a face by index or policy), identify with ``largest_only`` (the policy's face) and enrollment
(its own chooser: one face of enrollment size). The all-faces recipe (``align_all``, ``embed_all``)
serves detect, embed and identify. Detection and alignment run in a worker thread; embedding goes
through the pipeline's micro-batcher (enrollment embeds its accepted faces in one batch, in
``service.usecases.enroll``). ``faces_embedded`` is counted where faces are embedded; each use case
counts the detections its answer reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.types import AlignedFace, DetectedFace, EmbeddedFace, ImageArray
from service.settings import FacePolicy
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker

# (pipeline, image) → every face found (largest first) and the chosen one's index (None: none chosen).
FaceChooser = Callable[[FacePipeline, ImageArray], tuple[list[DetectedFace], int | None]]


@dataclass(frozen=True)
class FaceChoice:
    """Which face of an image: the one at ``index`` (largest first) if given, else ``policy``'s choice."""

    policy: FacePolicy
    index: int | None = None
    coarse: bool = True  # a coarse detection pass may settle the policy's choice (not with an index)

    def __call__(self, pipeline: FacePipeline, image: ImageArray) -> tuple[list[DetectedFace], int | None]:
        # Callers that index faces need the full detection's order: no coarse pass then.
        coarse = self.coarse and self.index is None
        faces, chosen = pipeline.detect_chosen(image, self.policy, coarse=coarse)
        return faces, chosen if chosen is None or self.index is None else self.index


@dataclass(frozen=True)
class LocatedFace:
    faces: list[DetectedFace]  # every face found, largest first
    index: int | None  # the chosen face's position in ``faces`` (None: no face chosen)
    aligned: AlignedFace | None  # the chosen face aligned and assessed (None: none, or index out of range)


@dataclass(frozen=True)
class ChosenFace:
    faces: list[DetectedFace]
    index: int | None
    embedded: EmbeddedFace | None  # None exactly when ``LocatedFace.aligned`` was


def locate_chosen(pipeline: FacePipeline, image: ImageArray, choose: FaceChooser) -> LocatedFace:
    """Detect, choose, align and assess the chosen face (blocking)."""
    faces, index = choose(pipeline, image)
    if index is None or index >= len(faces):
        return LocatedFace(faces, index, None)
    (aligned,) = pipeline.align_and_assess(image, [faces[index]])
    return LocatedFace(faces, index, aligned)


async def embed_aligned(resources: ServiceResources, aligned: Sequence[AlignedFace]) -> list[EmbeddedFace]:
    """Embed aligned faces through the micro-batcher, counting them."""
    embedded = await resources.pipeline.embed_aligned(aligned)
    resources.metrics.faces_embedded.inc(len(embedded))
    return embedded


async def embed_choice(resources: ServiceResources, image: ImageArray, choose: FaceChooser) -> ChosenFace:
    """The whole recipe: the chosen face located in a worker thread, then embedded."""
    located = await in_worker(locate_chosen, resources.pipeline, image, choose)
    if located.aligned is None:
        return ChosenFace(located.faces, located.index, None)
    (embedded,) = await embed_aligned(resources, [located.aligned])
    return ChosenFace(located.faces, located.index, embedded)


async def align_all(resources: ServiceResources, image: ImageArray) -> list[AlignedFace]:
    """Every face (largest first), aligned and assessed, not embedded."""
    return await in_worker(resources.pipeline.detect_and_align, image)


async def embed_all(resources: ServiceResources, image: ImageArray) -> list[EmbeddedFace]:
    """Every face (largest first), aligned, assessed and embedded."""
    return await embed_aligned(resources, await align_all(resources, image))
