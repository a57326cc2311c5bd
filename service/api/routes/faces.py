"""Single enrolled faces: read one, move one to another subject, delete one."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.api.deps import EnrollAccess, ReadAccess, Resources
from service.api.presenters import face_out
from service.api.responses import AUTH_ERRORS, NOT_FOUND
from service.api.schemas import FaceMove, FaceOut, Problem
from service.usecases import faces

router = APIRouter(prefix="/v1/faces", tags=["gallery"], responses=AUTH_ERRORS)


@router.get("/{face_id}", summary="Get one enrolled face", responses=NOT_FOUND)
async def get_face(face_id: str, resources: Resources, _: ReadAccess) -> FaceOut:
    return face_out(await faces.get_face(resources, face_id))


@router.post(
    "/{face_id}/move",
    summary="Move one enrolled face (and its crop) to another subject",
    description="Both subjects' `updated_at` change; the face keeps its id. Identify answers with the "
    "subject the face now belongs to.",
    responses={
        404: {
            "model": Problem,
            "description": "`face_id` (no `errors`) or `subject_id` (`body.subject_id`) unknown",
        }
    },
)
async def move_face(face_id: str, body: FaceMove, resources: Resources, _: EnrollAccess) -> FaceOut:
    return face_out(await faces.move_face(resources, face_id, body.subject_id))


@router.delete(
    "/{face_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one enrolled face",
    responses=NOT_FOUND,
)
async def delete_face(face_id: str, resources: Resources, _: EnrollAccess) -> Response:
    await faces.delete_face(resources, face_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
