"""Single enrolled faces: read one (and its stored crop), move one to another subject, delete one."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.api.deps import EnrollAccess, ReadAccess, Resources
from service.api.presenters import face_out
from service.api.responses import AUTH_ERRORS, NOT_FOUND
from service.api.schemas import FaceMove, FaceOut, Problem
from service.usecases import faces

router = APIRouter(prefix="/faces", tags=["gallery"], responses=AUTH_ERRORS)


@router.get("/{face_id}", summary="Get one enrolled face", responses=NOT_FOUND)
async def get_face(face_id: str, resources: Resources, _: ReadAccess) -> FaceOut:
    return face_out(await faces.get_face(resources, face_id))


@router.get(
    "/{face_id}/crop",
    summary="The face's stored crop (PNG)",
    description="The aligned-for-storage crop kept at enrollment (what `face-service reembed` re-embeds), "
    "as `image/png`. Faces enrolled with `FACE_STORE_CROPS=false` have none.",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the crop, PNG (RGB)"},
        404: {
            "model": Problem,
            "description": "`face_not_found`: no such face; `face_has_no_crop`: it was enrolled without one",
        },
    },
)
async def get_face_crop(face_id: str, resources: Resources, _: ReadAccess) -> Response:
    png = await faces.face_crop_png(resources, face_id)
    # Biometric data: no shared cache may keep it.
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


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
