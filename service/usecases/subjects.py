"""Manage gallery subjects: create, list (cursor pages), read, update, merge, delete; list their faces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.gallery.store import FaceRecord, Subject, SubjectNotFoundError, SubjectPage
from service.usecases.errors import SelfMergeError, TargetSubjectNotFoundError
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


async def merge_subject(
    resources: ServiceResources, source_id: str, target_id: str, *, target_field: str = "body.into"
) -> Subject:
    """Merge ``source_id`` into ``target_id``; returns the target after the merge.

    A missing source stays a plain ``SubjectNotFoundError`` (the path's 404); a missing target is
    reported against ``target_field``, so the caller learns which of the two ids is wrong.
    """
    if source_id == target_id:
        raise SelfMergeError(source_id, target_field)
    try:
        return await in_worker(resources.gallery.merge_subject, source_id, target_id)
    except SubjectNotFoundError as error:
        if error.subject_id == target_id:
            raise TargetSubjectNotFoundError(target_id, target_field) from None
        raise


async def delete_subject(resources: ServiceResources, subject_id: str) -> None:
    await in_worker(resources.gallery.delete_subject, subject_id)


async def list_subject_faces(resources: ServiceResources, subject_id: str) -> list[FaceRecord]:
    return await in_worker(resources.gallery.list_faces, subject_id)
