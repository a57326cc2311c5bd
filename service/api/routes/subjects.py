"""Gallery subjects: create, list (cursor pages), read, update, merge, delete; their faces: list."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from service.api.deps import EnrollAccess, ReadAccess, Resources
from service.api.presenters import enrollment_response, face_out, subject_out
from service.api.responses import AUTH_ERRORS, IMAGE_ERRORS, NOT_FOUND
from service.api.schemas import (
    EnrollmentResponse,
    FaceList,
    Problem,
    SubjectCreate,
    SubjectMerge,
    SubjectOut,
    SubjectPage,
    SubjectUpdate,
)
from service.api.uploads import image_inputs
from service.settings import FacePolicy
from service.usecases import subjects
from service.usecases.enroll import EnrollRequest, enroll

router = APIRouter(prefix="/v1/subjects", tags=["gallery"], responses=AUTH_ERRORS)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a subject")
async def create_subject(body: SubjectCreate, resources: Resources, _: EnrollAccess) -> SubjectOut:
    subject = await subjects.create_subject(resources, body.name, body.metadata)
    return subject_out(subject)


@router.get("", summary="List subjects (creation order, cursor pagination)")
async def list_subjects(
    resources: Resources,
    _: ReadAccess,
    limit: Annotated[int, Query(ge=1, le=500, description="page size")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
) -> SubjectPage:
    page = await subjects.list_subjects(resources, cursor, limit)
    return SubjectPage(subjects=[subject_out(s) for s in page.items], next_cursor=page.next_cursor)


@router.get("/{subject_id}", summary="Get a subject", responses=NOT_FOUND)
async def get_subject(subject_id: str, resources: Resources, _: ReadAccess) -> SubjectOut:
    return subject_out(await subjects.get_subject(resources, subject_id))


@router.patch(
    "/{subject_id}",
    summary="Rename a subject or replace its metadata",
    responses=NOT_FOUND,
)
async def update_subject(
    subject_id: str, body: SubjectUpdate, resources: Resources, _: EnrollAccess
) -> SubjectOut:
    updated = await subjects.update_subject(resources, subject_id, name=body.name, metadata=body.metadata)
    return subject_out(updated)


@router.post(
    "/{subject_id}/merge",
    summary="Merge a subject into another (its faces move, then it is deleted)",
    description="In one transaction: every face of `subject_id` (crops too) moves to the subject `into` "
    "names, whose metadata keeps its own keys and gains the keys only `subject_id` had; then `subject_id` "
    "is deleted. Answers the subject merged into, its `face_count` and `updated_at` new.",
    responses={
        404: {"model": Problem, "description": "`subject_id` (no `errors`) or `into` (`body.into`) unknown"},
        422: {"model": Problem, "description": "`into` names `subject_id` itself, or the body is invalid"},
    },
)
async def merge_subject(
    subject_id: str, body: SubjectMerge, resources: Resources, _: EnrollAccess
) -> SubjectOut:
    return subject_out(await subjects.merge_subject(resources, subject_id, body.into))


@router.delete(
    "/{subject_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a subject and all its faces",
    responses=NOT_FOUND,
)
async def delete_subject(subject_id: str, resources: Resources, _: EnrollAccess) -> Response:
    await subjects.delete_subject(resources, subject_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{subject_id}/faces", summary="List a subject's enrolled faces", responses=NOT_FOUND)
async def list_subject_faces(subject_id: str, resources: Resources, _: ReadAccess) -> FaceList:
    records = await subjects.list_subject_faces(resources, subject_id)
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
    resources: Resources,
    _: EnrollAccess,
    face_policy: Annotated[
        FacePolicy | None,
        Form(
            description="for images with several faces of enrollment size: enroll the one this policy "
            "chooses (largest, centre, score); unset: such images are refused (multiple_faces)"
        ),
    ] = None,
) -> EnrollmentResponse:
    request = EnrollRequest(subject_id, await image_inputs(images, "images"), face_policy)
    return enrollment_response(await enroll(resources, request))
