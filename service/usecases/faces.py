"""Manage single enrolled faces: delete one."""

from __future__ import annotations

from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


async def delete_face(resources: ServiceResources, face_id: str) -> None:
    await in_worker(resources.gallery.delete_face, face_id)
