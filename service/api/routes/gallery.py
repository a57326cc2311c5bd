"""The whole gallery as a portable archive: export (download) and import (upload), admin scope."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import IO, Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service.api.deps import AdminAccess, Resources
from service.api.presenters import import_response
from service.api.responses import AUTH_ERRORS
from service.api.schemas import GalleryImportResponse, Problem
from service.gallery.archive import MEDIA_TYPE
from service.usecases import gallery_archive
from service.usecases.gallery_archive import ImportOptions, OnConflict

router = APIRouter(prefix="/gallery", tags=["gallery"], responses=AUTH_ERRORS)

IMPORT_PATH = "/v1/gallery/import"  # its body limit is FACE_MAX_IMPORT_BYTES (service/api/app.py)


_CHUNK = 1024 * 1024


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


@router.get(
    "/export",
    summary="Download the whole gallery as an archive (subjects, faces, embeddings, crops, checksums)",
    description='A tar file (format: docs/api.md, "Export and import a gallery"), written to an anonymous '
    "temp file first (nothing stays on disk), then sent with its length. Each subject is read "
    "consistently; stop enrolling for a point-in-time copy of the whole gallery.",
    response_class=StreamingResponse,
    responses={200: {"content": {MEDIA_TYPE: {}}, "description": "the archive"}},
)
async def export_gallery(resources: Resources, _: AdminAccess) -> StreamingResponse:
    exported = await gallery_archive.export_gallery(resources)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {
        "Content-Disposition": f'attachment; filename="gallery-{stamp}.tar"',
        "Content-Length": str(exported.size),
        "X-Gallery-Subjects": str(exported.summary.subjects),
        "X-Gallery-Faces": str(exported.summary.faces),
    }
    # Closed by the iterator at its end, or here when the client went away before it.
    return StreamingResponse(
        _chunks(exported.file),
        media_type=MEDIA_TYPE,
        headers=headers,
        background=BackgroundTask(exported.file.close),
    )


@router.post(
    "/import",
    summary="Import a gallery archive (verified first, then all or nothing)",
    description="Every checksum, the manifest and every record are verified before anything is written; "
    "then all subjects and faces go in in one transaction and are searchable when the answer comes. "
    "An archive of this gallery's pack brings its embeddings; another pack's is re-embedded from its "
    "crops. Ids are kept; `on_conflict` says what happens to ids the gallery holds already. The body "
    "limit is FACE_MAX_IMPORT_BYTES; the upload is spooled to a temp file, not held in memory.",
    responses={
        409: {"model": Problem, "description": "ids the gallery holds already (on_conflict=refuse)"},
        413: {"model": Problem, "description": "the upload exceeds FACE_MAX_IMPORT_BYTES"},
        422: {
            "model": Problem,
            "description": "not a valid archive (truncated, altered, unknown version, bad member), or "
            "faces without a crop that another pack's archive would need re-embedded",
        },
    },
)
async def import_gallery(
    file: Annotated[UploadFile, File(description="the archive GET /v1/gallery/export gave")],
    resources: Resources,
    _: AdminAccess,
    on_conflict: Annotated[
        OnConflict,
        Form(
            description="ids the gallery holds already: refuse (409, nothing imported), skip (leave "
            "those subjects, with their faces, and those faces out), new-ids (give them new ids)"
        ),
    ] = OnConflict.REFUSE,
    skip_faces_without_crop: Annotated[
        bool,
        Form(
            description="re-embedding another pack's archive: leave faces without a crop out instead of 422"
        ),
    ] = False,
) -> GalleryImportResponse:
    options = ImportOptions(on_conflict=on_conflict, skip_faces_without_crop=skip_faces_without_crop)
    return import_response(await gallery_archive.import_gallery(resources, file.file, options))
