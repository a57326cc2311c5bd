"""Gallery subjects: create, list (cursor pages), read, update, merge, delete; their faces: list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import AfterValidator

from service.api.deps import EnrollAccess, ReadAccess, Resources
from service.api.presenters import enrollment_response, face_out, subject_out
from service.api.request_bodies import form_or_json, image_bodies
from service.api.responses import AUTH_ERRORS, IMAGE_ERRORS, NOT_FOUND
from service.api.schemas import (
    EnrollForm,
    EnrollJson,
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
from service.gallery.input_limits import MAX_METADATA_KEY_CHARS, MAX_NAME_CHARS, check_name
from service.usecases import subjects
from service.usecases.enroll import EnrollRequest, enroll

router = APIRouter(prefix="/subjects", tags=["gallery"], responses=AUTH_ERRORS)


# Longer string values are stored (metadata may reach 16 KiB) but not searched for.
MAX_FILTER_VALUE_CHARS = 1024


def _without_nul(text: str | None) -> str | None:
    """Refuse NUL: PostgreSQL's text and JSONB cannot hold it, so no backend is asked for it."""
    if text is not None and "\x00" in text:
        raise ValueError(f"NUL (U+0000) at position {text.index(chr(0))} is not allowed")
    return text


_DUPLICATE_NAME: dict[int | str, dict[str, Any]] = {
    409: {
        "model": Problem,
        "description": "FACE_DUPLICATE_NAMES=refuse and another subject has this name (trimmed, any "
        "case): `duplicate_name` on `body.name`; nothing was written",
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create a subject", responses=_DUPLICATE_NAME)
async def create_subject(body: SubjectCreate, resources: Resources, _: EnrollAccess) -> SubjectOut:
    subject = await subjects.create_subject(resources, body.name, body.metadata)
    return subject_out(subject)


@router.get(
    "",
    summary="List subjects (creation order, cursor pagination), optionally filtered",
    description="Filters combine with AND; pages keep creation order. A cursor is a position in that "
    "order, so it works with any filters (they are applied again on every page).",
)
async def list_subjects(
    resources: Resources,
    _: ReadAccess,
    limit: Annotated[int, Query(ge=1, le=500, description="page size")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="`next_cursor` of the previous page")
    ] = None,
    name_prefix: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_NAME_CHARS,
            description="names starting with this, ignoring case (Unicode case folding) and the name's "
            "leading spaces; `%` and `_` are plain characters; control characters are refused, as in names",
        ),
        AfterValidator(check_name),
    ] = None,
    metadata_key: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=MAX_METADATA_KEY_CHARS,
            description="metadata has this top-level key (exact case)",
        ),
        AfterValidator(_without_nul),
    ] = None,
    metadata_value: Annotated[
        str | None,
        Query(
            max_length=MAX_FILTER_VALUE_CHARS,
            description="with `metadata_key`: its value is this string exactly, or, when this is spelled "
            "as a JSON number or `true`/`false`/`null`, that number (42 matches 42 and 42.0) or literal; "
            "object and array values never match",
        ),
        AfterValidator(_without_nul),
    ] = None,
) -> SubjectPage:
    where = subjects.subject_filter(name_prefix, metadata_key, metadata_value)
    page = await subjects.list_subjects(resources, cursor, limit, where)
    return SubjectPage(subjects=[subject_out(s) for s in page.items], next_cursor=page.next_cursor)


@router.get("/{subject_id}", summary="Get a subject", responses=NOT_FOUND)
async def get_subject(subject_id: str, resources: Resources, _: ReadAccess) -> SubjectOut:
    return subject_out(await subjects.get_subject(resources, subject_id))


@router.patch(
    "/{subject_id}",
    summary="Rename a subject or replace its metadata",
    responses={**NOT_FOUND, **_DUPLICATE_NAME},
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
    openapi_extra=image_bodies(EnrollForm, EnrollJson),
)
async def enroll_faces(
    subject_id: str,
    resources: Resources,
    _: EnrollAccess,
    body: Annotated[EnrollForm | EnrollJson, Depends(form_or_json(EnrollForm, EnrollJson))],
) -> EnrollmentResponse:
    images = await image_inputs(body.images, "images", resources.settings.max_image_bytes)
    request = EnrollRequest(subject_id, images, body.face_policy)
    return enrollment_response(await enroll(resources, request))
