"""Manage single enrolled faces: read one (and its stored crop), move one to another subject, delete one."""

from __future__ import annotations

from service.gallery.store import FaceRecord, SubjectNotFoundError
from service.usecases.errors import FaceHasNoCropError, TargetSubjectNotFoundError
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


async def get_face(resources: ServiceResources, face_id: str) -> FaceRecord:
    return await in_worker(resources.gallery.get_face, face_id)


async def face_crop_png(resources: ServiceResources, face_id: str) -> bytes:
    """The face's stored crop as PNG; FaceNotFoundError when unknown, FaceHasNoCropError without one."""

    def read() -> bytes | None:
        crop = resources.gallery.get_crop(face_id)
        return None if crop is None else crop.png_bytes()

    png = await in_worker(read)
    if png is None:
        raise FaceHasNoCropError(face_id)
    return png


async def move_face(
    resources: ServiceResources, face_id: str, subject_id: str, *, subject_field: str = "body.subject_id"
) -> FaceRecord:
    """Make the face ``subject_id``'s (its crop too); a missing subject is reported as ``subject_field``."""
    try:
        return await in_worker(resources.gallery.move_face, face_id, subject_id)
    except SubjectNotFoundError as error:
        raise TargetSubjectNotFoundError(error.subject_id, subject_field) from None


async def delete_face(resources: ServiceResources, face_id: str) -> None:
    await in_worker(resources.gallery.delete_face, face_id)
