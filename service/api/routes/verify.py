"""POST /v1/verify: are two faces the same person? Two images, or one image against a subject."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadAccess, Services
from service.api.errors import ApiError, FieldError
from service.api.gather import gather_all
from service.api.images import held_image
from service.api.params import FacePolicyForm, ThresholdForm, ThresholdQuery
from service.api.presenters import box_of, readable_name, similarity_of
from service.api.responses import IMAGE_ERRORS, NOT_FOUND, SUBJECT_HAS_NO_FACES
from service.api.schemas import ComparedFace, SubjectRef, ThresholdOut, VerifyResponse
from service.api.state import AppServices
from service.pipeline.types import EmbeddedFace, ImageArray
from service.settings import FacePolicy

router = APIRouter(prefix="/v1", tags=["inference"])

_MAX_FACE_INDEX = 999


async def _chosen_face(
    services: AppServices,
    upload: UploadFile,
    field: str,
    choice: tuple[int | None, FacePolicy],
    index_field: str,
) -> tuple[EmbeddedFace, ComparedFace]:
    """Detect every face, then embed only the one at the given index, or else the policy's choice."""
    async with held_image(upload, field, services) as pixels:
        return await _embed_chosen(services, pixels, field, choice, index_field)


async def _embed_chosen(
    services: AppServices,
    pixels: ImageArray,
    field: str,
    choice: tuple[int | None, FacePolicy],
    index_field: str,
) -> tuple[EmbeddedFace, ComparedFace]:
    face_index, policy = choice
    # Full-size detection only: the response's face_index and faces_in_image count /v1/detect's faces,
    # which a coarse pass (that may miss some) could not.
    detect = services.pipeline.detect_chosen
    faces, chosen_index = await run_in_threadpool(detect, pixels, policy, coarse=False)
    services.metrics.faces_detected.inc(len(faces))
    if chosen_index is None:
        raise ApiError(
            422, "no_face", f"{field}: no face found", errors=[FieldError(field, "no face found", "no_face")]
        )
    if face_index is None:
        face_index = chosen_index
    if face_index >= len(faces):
        raise ApiError(
            422,
            "face_index_out_of_range",
            f"{index_field} is {face_index} but {field} has {len(faces)} face(s)",
            errors=[FieldError(index_field, f"{field} has {len(faces)} face(s)", "face_index_out_of_range")],
        )
    aligned = await run_in_threadpool(
        services.pipeline.align_and_assess, pixels, faces[face_index : face_index + 1]
    )
    (chosen,) = await services.pipeline.embed_aligned(aligned)
    services.metrics.faces_embedded.inc()
    return chosen, ComparedFace(
        face_index=face_index, faces_in_image=len(faces), box=box_of(chosen.face), score=chosen.face.score
    )


def _mode_error(detail: str) -> ApiError:
    return ApiError(
        422,
        "invalid_verify_request",
        detail,
        errors=[
            FieldError("body", "send image_a and image_b, or image and subject_id", "invalid_combination")
        ],
    )


@router.post(
    "/verify",
    summary="Verify: same person?",
    responses={**IMAGE_ERRORS, **NOT_FOUND, **SUBJECT_HAS_NO_FACES},
)
async def verify(
    services: Services,
    _: ReadAccess,
    image_a: Annotated[UploadFile | None, File(description="first image (pair mode)")] = None,
    image_b: Annotated[UploadFile | None, File(description="second image (pair mode)")] = None,
    image: Annotated[UploadFile | None, File(description="probe image (subject mode)")] = None,
    subject_id: Annotated[
        str | None, Form(description="enrolled subject (subject mode)", max_length=64)
    ] = None,
    face_index_a: Annotated[
        int | None,
        Form(
            ge=0, le=_MAX_FACE_INDEX, description="face of image_a/image, largest first; unset: face_policy"
        ),
    ] = None,
    face_index_b: Annotated[
        int | None,
        Form(ge=0, le=_MAX_FACE_INDEX, description="face of image_b, largest first; unset: face_policy"),
    ] = None,
    face_policy: FacePolicyForm = None,
    threshold_form: ThresholdForm = None,
    threshold_query: ThresholdQuery = None,
) -> VerifyResponse:
    pair_mode = image_a is not None or image_b is not None
    subject_mode = image is not None or subject_id is not None
    if pair_mode == subject_mode:
        raise _mode_error("send either image_a and image_b, or image and subject_id")
    threshold = services.thresholds.resolve(threshold_form if threshold_form is not None else threshold_query)
    threshold_out = ThresholdOut(name=threshold.name, value=threshold.value)
    policy = face_policy or services.settings.face_policy

    if image_a is not None and image_b is not None:
        (face_a, compared_a), (face_b, compared_b) = await gather_all(
            _chosen_face(services, image_a, "image_a", (face_index_a, policy), "face_index_a"),
            _chosen_face(services, image_b, "image_b", (face_index_b, policy), "face_index_b"),
        )
        similarity = similarity_of(np.dot(face_a.embedding, face_b.embedding))
        return VerifyResponse(
            mode="pair",
            similarity=similarity,
            threshold=threshold_out,
            match=similarity >= threshold.value,
            face_a=compared_a,
            face_b=compared_b,
        )
    if image is None or subject_id is None:
        raise _mode_error("pair mode needs both image_a and image_b; subject mode needs image and subject_id")

    subject = await run_in_threadpool(services.gallery.get_subject, subject_id)  # 404 before any inference
    probe, compared = await _chosen_face(services, image, "image", (face_index_a, policy), "face_index_a")
    similarity = similarity_of(
        await run_in_threadpool(services.gallery.verify_against_subject, probe.embedding, subject_id)
    )
    return VerifyResponse(
        mode="subject",
        similarity=similarity,
        threshold=threshold_out,
        match=similarity >= threshold.value,
        face_a=compared,
        subject=SubjectRef(id=subject.id, name=readable_name(subject.name)),
    )
