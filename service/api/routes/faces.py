"""Single enrolled faces: delete one."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from service.api.deps import EnrollAccess, Resources
from service.api.responses import AUTH_ERRORS, NOT_FOUND
from service.usecases import faces

router = APIRouter(prefix="/v1/faces", tags=["gallery"], responses=AUTH_ERRORS)


@router.delete(
    "/{face_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one enrolled face",
    responses=NOT_FOUND,
)
async def delete_face(face_id: str, resources: Resources, _: EnrollAccess) -> Response:
    await faces.delete_face(resources, face_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
