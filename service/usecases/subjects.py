"""Manage gallery subjects: create, list (cursor pages), read, update, delete; list their faces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.gallery.store import FaceRecord, Subject, SubjectPage
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


async def create_subject(
    resources: ServiceResources, name: str, metadata: Mapping[str, Any] | None
) -> Subject:
    return await in_worker(resources.gallery.create_subject, name, metadata)


async def list_subjects(resources: ServiceResources, cursor: str | None, limit: int) -> SubjectPage:
    return await in_worker(resources.gallery.list_subjects, cursor, limit)


async def get_subject(resources: ServiceResources, subject_id: str) -> Subject:
    return await in_worker(resources.gallery.get_subject, subject_id)


async def update_subject(
    resources: ServiceResources, subject_id: str, *, name: str | None, metadata: Mapping[str, Any] | None
) -> Subject:
    return await in_worker(resources.gallery.update_subject, subject_id, name=name, metadata=metadata)


async def delete_subject(resources: ServiceResources, subject_id: str) -> None:
    await in_worker(resources.gallery.delete_subject, subject_id)


async def list_subject_faces(resources: ServiceResources, subject_id: str) -> list[FaceRecord]:
    return await in_worker(resources.gallery.list_faces, subject_id)
