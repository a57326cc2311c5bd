"""Single enrolled faces: delete one."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from starlette.concurrency import run_in_threadpool

from service.api.deps import EnrollAccess, Services
from service.api.responses import AUTH_ERRORS, NOT_FOUND

router = APIRouter(prefix="/v1/faces", tags=["gallery"], responses=AUTH_ERRORS)


@router.delete(
    "/{face_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete one enrolled face",
    responses=NOT_FOUND,
)
async def delete_face(face_id: str, services: Services, _: EnrollAccess) -> Response:
    await run_in_threadpool(services.gallery.delete_face, face_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
