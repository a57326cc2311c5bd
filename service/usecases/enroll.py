"""Enroll: which images give a face worth keeping, and committing them together.

Per image: decode (large JPEGs drafted) → detect → one face of enrollment size (smaller background
faces are ignored; two or more big enough is ``multiple_faces`` unless the request names a face
policy, which then chooses among them: enrolling a bystander under someone's name must be asked for)
→ quality bars. The accepted faces of one request are embedded in one batch and committed in ONE
gallery transaction: all of them, or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.gallery.store import NewFace, StoredCrop
from service.pipeline.decode import ImageDecodeError, OpenedImage
from service.pipeline.face_choice import choose_face
from service.pipeline.face_pipeline import FacePipeline
from service.pipeline.quality import QualityBars, Rejection, enrollment_rejection
from service.pipeline.types import AlignedFace, DetectedFace, ImageArray
from service.settings import FacePolicy
from service.usecases.errors import NoFaceAcceptedError, TooManyImagesError
from service.usecases.face_work import LocatedFace, locate_chosen
from service.usecases.gather import gather_all
from service.usecases.images import ImageInput, open_image_bytes, reserved
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


@dataclass(frozen=True)
class EnrollRequest:
    subject_id: str
    images: Sequence[ImageInput]
    face_policy: FacePolicy | None = None  # chooses among several faces of enrollment size; None: refuse
    images_field: str = "images"  # the caller's name for the list (a too-long list is an error on it)


@dataclass(frozen=True)
class Candidate:
    """An image whose face passed every check, waiting to be embedded and committed.

    Only the chip and the storage crop are kept: the decoded image is released once examined.
    """

    face: AlignedFace
    crop: StoredCrop | None


@dataclass(frozen=True)
class ImageOutcome:
    index: int
    filename: str | None
    candidate: Candidate | None = None
    rejection: Rejection | None = None
    face_id: str | None = None  # set once committed


@dataclass(frozen=True)
class EnrollmentResult:
    subject_id: str
    outcomes: list[ImageOutcome]  # request order; accepted ones carry their new face id

    @property
    def accepted(self) -> int:
        return sum(outcome.face_id is not None for outcome in self.outcomes)

    @property
    def rejected(self) -> int:
        return len(self.outcomes) - self.accepted


@dataclass(frozen=True)
class EnrollmentChoice:
    """The face chooser of enrollment: the one face of enrollment size (or the policy's among several).

    None chosen with faces found: several big enough and no policy. No face big enough: the largest
    small one, which then fails the size bar with a clear reason.
    """

    min_face_size: float
    policy: FacePolicy | None

    def big_enough(self, faces: Sequence[DetectedFace]) -> list[int]:
        return [i for i, face in enumerate(faces) if min(face.width, face.height) >= self.min_face_size]

    def __call__(self, pipeline: FacePipeline, image: ImageArray) -> tuple[list[DetectedFace], int | None]:
        faces = pipeline.detect(image)
        big = self.big_enough(faces)
        if not big:
            return faces, 0 if faces else None
        if len(big) == 1:
            return faces, big[0]
        if self.policy is None:
            return faces, None
        choice = choose_face([faces[i] for i in big], (image.shape[1], image.shape[0]), self.policy)
        return faces, big[choice or 0]


def _refusal(located: LocatedFace, choose: EnrollmentChoice, bars: QualityBars) -> Rejection | None:
    if not located.faces:
        return Rejection("no_face", "no face found in the image")
    if located.aligned is None:
        count = len(choose.big_enough(located.faces))
        return Rejection(
            "multiple_faces",
            f"{count} faces of at least {bars.min_face_size:g} px; enroll images with one person "
            "or pass face_policy to choose one",
        )
    return enrollment_rejection(located.aligned.quality, bars)


def _invalid_image(index: int, filename: str | None, exc: ImageDecodeError) -> ImageOutcome:
    return ImageOutcome(index, filename, rejection=Rejection("invalid_image", f"{exc.code}: {exc.detail}"))


def _examine(
    resources: ServiceResources, opened: OpenedImage, index: int, image: ImageInput, policy: FacePolicy | None
) -> ImageOutcome:
    """Decode and check one image, and cut its storage crop (blocking)."""
    try:
        pixels = opened.decode()
    except ImageDecodeError as exc:
        return _invalid_image(index, image.filename, exc)
    bars = resources.quality_bars
    choose = EnrollmentChoice(bars.min_face_size, policy)
    located = locate_chosen(resources.pipeline, pixels, choose)
    rejection = _refusal(located, choose, bars)
    if rejection is not None or located.aligned is None:
        return ImageOutcome(index, image.filename, rejection=rejection)
    face = located.aligned
    crop = (
        StoredCrop(*resources.pipeline.storage_crop(pixels, face.face))
        if resources.settings.store_crops
        else None
    )
    return ImageOutcome(index, image.filename, candidate=Candidate(face, crop))


async def _examine_image(
    resources: ServiceResources, index: int, image: ImageInput, policy: FacePolicy | None
) -> ImageOutcome:
    """Header checks, then decode + detect + align within the pixel budget (large JPEGs drafted)."""
    try:
        opened = await in_worker(open_image_bytes, image.data, resources.settings, draft=True)
    except ImageDecodeError as exc:
        return _invalid_image(index, image.filename, exc)
    with opened:
        async with reserved(resources, opened):
            return await in_worker(_examine, resources, opened, index, image, policy)


async def examine_images(
    resources: ServiceResources, images: Sequence[ImageInput], policy: FacePolicy | None = None
) -> list[ImageOutcome]:
    """Every image's outcome, in request order; images are examined concurrently in worker threads.

    Raises ``BusyError`` (nothing is stored) when the pixel budget stays full too long.
    """
    return await gather_all(
        *(_examine_image(resources, index, image, policy) for index, image in enumerate(images))
    )


async def new_faces(resources: ServiceResources, candidates: Sequence[Candidate]) -> list[NewFace]:
    """Embed the accepted faces in one batch, with their re-alignable crops (FACE_STORE_CROPS)."""
    embeddings = await resources.pipeline.embed_chips([candidate.face.chip for candidate in candidates])
    resources.metrics.faces_embedded.inc(len(candidates))
    return [
        NewFace(
            embedding=np.asarray(embedding, dtype=np.float32),
            det_score=candidate.face.face.score,
            quality=dataclasses.asdict(candidate.face.quality),
            crop=candidate.crop,
        )
        for candidate, embedding in zip(candidates, embeddings, strict=True)
    ]


def _check_count(request: EnrollRequest, limit: int) -> None:
    if len(request.images) > limit:
        raise TooManyImagesError(request.images_field, len(request.images), limit)


async def enroll(resources: ServiceResources, request: EnrollRequest) -> EnrollmentResult:
    """Examine every image, then embed and commit the accepted faces together (or raise, storing none)."""
    _check_count(request, resources.settings.max_images_per_request)
    await in_worker(resources.gallery.get_subject, request.subject_id)  # 404 before any inference
    outcomes = await examine_images(resources, request.images, request.face_policy)
    rejections = [(o.index, o.rejection) for o in outcomes if o.rejection is not None]
    for _, rejection in rejections:
        resources.metrics.enrollment_rejections.labels(reason=rejection.code).inc()
    accepted = [outcome.candidate for outcome in outcomes if outcome.candidate is not None]
    if not accepted:
        raise NoFaceAcceptedError([(f"{request.images_field}[{i}]", r) for i, r in rejections])
    faces = await new_faces(resources, accepted)
    records = iter(await in_worker(resources.gallery.add_faces, request.subject_id, faces))
    committed = [
        dataclasses.replace(outcome, face_id=next(records).id) if outcome.candidate is not None else outcome
        for outcome in outcomes
    ]
    return EnrollmentResult(request.subject_id, committed)
