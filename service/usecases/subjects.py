"""Manage gallery subjects: create, list (cursor pages, filters), read, update, merge, delete; list faces.

Duplicate names (FACE_DUPLICATE_NAMES): ``flag`` lets them in (subjects say ``duplicate_name``);
``refuse`` turns a create or rename to a name another subject has into ``DuplicateNameRefusedError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.gallery.store import (
    DuplicateNameError,
    FaceRecord,
    Subject,
    SubjectFilter,
    SubjectNotFoundError,
    SubjectPage,
)
from service.settings import DuplicateNames
from service.usecases.errors import (
    DuplicateNameRefusedError,
    MetadataValueWithoutKeyError,
    SelfMergeError,
    TargetSubjectNotFoundError,
)
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


def _refuse_duplicates(resources: ServiceResources) -> bool:
    return resources.settings.duplicate_names is DuplicateNames.REFUSE


async def create_subject(
    resources: ServiceResources,
    name: str,
    metadata: Mapping[str, Any] | None,
    *,
    name_field: str = "body.name",
) -> Subject:
    """A new subject; under FACE_DUPLICATE_NAMES=refuse, refused when another has the same name."""
    try:
        return await in_worker(
            resources.gallery.create_subject, name, metadata, unique_name=_refuse_duplicates(resources)
        )
    except DuplicateNameError as error:
        raise DuplicateNameRefusedError(error.name, error.other_id, name_field) from None


def subject_filter(
    name_prefix: str | None,
    metadata_key: str | None,
    metadata_value: str | None,
    *,
    key_field: str = "query.metadata_key",
    value_field: str = "query.metadata_value",
) -> SubjectFilter:
    """The filter a listing asked for (see ``SubjectFilter`` for what each criterion matches)."""
    if metadata_value is not None and metadata_key is None:
        raise MetadataValueWithoutKeyError(value_field, key_field)
    return SubjectFilter(name_prefix, metadata_key, metadata_value)


async def list_subjects(
    resources: ServiceResources, cursor: str | None, limit: int, where: SubjectFilter | None = None
) -> SubjectPage:
    """Subjects in creation order that ``where`` keeps; a cursor is a position, valid with any filter."""
    return await in_worker(resources.gallery.list_subjects, cursor, limit, where)


async def get_subject(resources: ServiceResources, subject_id: str) -> Subject:
    return await in_worker(resources.gallery.get_subject, subject_id)


async def update_subject(
    resources: ServiceResources,
    subject_id: str,
    *,
    name: str | None,
    metadata: Mapping[str, Any] | None,
    name_field: str = "body.name",
) -> Subject:
    """Rename and/or replace metadata; a rename is checked for duplicates as ``create_subject`` is."""
    try:
        return await in_worker(
            resources.gallery.update_subject,
            subject_id,
            name=name,
            metadata=metadata,
            unique_name=_refuse_duplicates(resources),
        )
    except DuplicateNameError as error:
        raise DuplicateNameRefusedError(error.name, error.other_id, name_field) from None


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
