"""Gallery subjects: create, list (cursor pages), read, update, delete; their faces: list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import EnrollAccess, ReadAccess, Services
from service.api.enrollment import examine_uploads, new_faces
from service.api.errors import ApiError, FieldError
from service.api.images import check_image_count
from service.api.presenters import face_out, subject_out
from service.api.responses import AUTH_ERRORS, IMAGE_ERRORS, NOT_FOUND
from service.api.schemas import (
    EnrollmentItem,
    EnrollmentResponse,
    FaceList,
    Problem,
    RejectionOut,
    SubjectCreate,
    SubjectOut,
    SubjectPage,
    SubjectUpdate,
)
from service.gallery.store import Subject
from service.settings import FacePolicy

router = APIRouter(prefix="/v1/subjects", tags=["gallery"], responses=AUTH_ERRORS)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a subject")
async def create_subject(body: SubjectCreate, services: Services, _: EnrollAccess) -> SubjectOut:
    subject = await run_in_threadpool(services.gallery.create_subject, body.name, body.metadata)
    return subject_out(subject)


@router.get("", summary="List subjects (creation order, cursor pagination)")
async def list_subjects(
    services: Services,
    _: ReadAccess,
    limit: Annotated[int, Query(ge=1, le=500, description="page size")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
) -> SubjectPage:
    page = await run_in_threadpool(services.gallery.list_subjects, cursor, limit)
    return SubjectPage(subjects=[subject_out(s) for s in page.items], next_cursor=page.next_cursor)


@router.get("/{subject_id}", summary="Get a subject", responses=NOT_FOUND)
async def get_subject(subject_id: str, services: Services, _: ReadAccess) -> SubjectOut:
    return subject_out(await run_in_threadpool(services.gallery.get_subject, subject_id))


@router.patch(
    "/{subject_id}",
    summary="Rename a subject or replace its metadata",
    responses=NOT_FOUND,
)
async def update_subject(
    subject_id: str, body: SubjectUpdate, services: Services, _: EnrollAccess
) -> SubjectOut:
    def update() -> Subject:
        return services.gallery.update_subject(subject_id, name=body.name, metadata=body.metadata)

    return subject_out(await run_in_threadpool(update))


@router.delete(
    "/{subject_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a subject and all its faces",
    responses=NOT_FOUND,
)
async def delete_subject(subject_id: str, services: Services, _: EnrollAccess) -> Response:
    await run_in_threadpool(services.gallery.delete_subject, subject_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{subject_id}/faces", summary="List a subject's enrolled faces", responses=NOT_FOUND)
async def list_subject_faces(subject_id: str, services: Services, _: ReadAccess) -> FaceList:
    records = await run_in_threadpool(services.gallery.list_faces, subject_id)
    return FaceList(faces=[face_out(record) for record in records])


@router.post(
    "/{subject_id}/faces",
    status_code=status.HTTP_201_CREATED,
    summary="Enroll faces from one or more images (committed together)",
    responses={
        **IMAGE_ERRORS,
        **NOT_FOUND,
        422: {"model": Problem, "description": "no image gave an acceptable face (reasons in `errors`)"},
    },
)
async def enroll_faces(
    subject_id: str,
    images: Annotated[list[UploadFile], File(description="one or more images, one person each")],
    services: Services,
    _: EnrollAccess,
    face_policy: Annotated[
        FacePolicy | None,
        Form(
            description="for images with several faces of enrollment size: enroll the one this policy "
            "chooses (largest, centre, score); unset: such images are refused (multiple_faces)"
        ),
    ] = None,
) -> EnrollmentResponse:
    check_image_count(images, "images", services.settings)
    await run_in_threadpool(services.gallery.get_subject, subject_id)  # 404 before any inference
    outcomes = await examine_uploads(services, images, face_policy)
    for outcome in outcomes:
        if outcome.rejection is not None:
            services.metrics.enrollment_rejections.labels(reason=outcome.rejection.code).inc()
    accepted = [outcome for outcome in outcomes if outcome.candidate is not None]
    if not accepted:
        raise ApiError(
            422,
            "no_face_accepted",
            "no image gave an acceptable face; nothing was enrolled",
            errors=[
                FieldError(f"images[{o.index}]", o.rejection.detail, o.rejection.code)
                for o in outcomes
                if o.rejection is not None
            ],
        )
    faces = await new_faces(services, [o.candidate for o in accepted if o.candidate is not None])
    services.metrics.faces_embedded.inc(len(faces))
    records = await run_in_threadpool(services.gallery.add_faces, subject_id, faces)
    face_ids = {outcome.index: record.id for outcome, record in zip(accepted, records, strict=True)}
    return EnrollmentResponse(
        subject_id=subject_id,
        accepted=len(accepted),
        rejected=len(outcomes) - len(accepted),
        results=[
            EnrollmentItem(
                index=o.index,
                filename=o.filename,
                accepted=o.index in face_ids,
                face_id=face_ids.get(o.index),
                rejection=None
                if o.rejection is None
                else RejectionOut.model_validate({"code": o.rejection.code, "detail": o.rejection.detail}),
            )
            for o in outcomes
        ],
    )
