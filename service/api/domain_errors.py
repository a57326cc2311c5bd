"""Gallery and threshold errors → problem responses, through one table (most specific class first).

A full disk (SQLite's "database or disk is full", ENOSPC, EFBIG, EDQUOT) from any write is 507
``storage_full``: the write was rolled back, so the client may retry once space is freed.
"""

from __future__ import annotations

import sqlite3

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.api.errors import FieldError, problem_response_for_scope
from service.api.thresholds import ThresholdError
from service.gallery.gallery import EmptySubjectError
from service.gallery.store import (
    FaceNotFoundError,
    GalleryError,
    InvalidCursorError,
    SubjectNotFoundError,
    is_storage_full,
)

STORAGE_FULL_DETAIL = (
    "the service's storage is full: nothing from this request was stored; retry once space is freed"
)

# (status, problem code, field the error is about or None)
_DOMAIN_ERRORS: dict[type[Exception], tuple[int, str, str | None]] = {
    SubjectNotFoundError: (404, "subject_not_found", None),
    FaceNotFoundError: (404, "face_not_found", None),
    InvalidCursorError: (422, "invalid_cursor", "query.cursor"),
    EmptySubjectError: (409, "subject_has_no_faces", None),
    ThresholdError: (422, "invalid_threshold", "threshold"),
}


def _lookup(exc: Exception) -> tuple[int, str, str | None] | None:
    for cls in type(exc).__mro__:
        found = _DOMAIN_ERRORS.get(cls)
        if found is not None:
            return found
    return None


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    found = _lookup(exc)
    if found is None:  # a GalleryError with no client meaning: let the 500 handler take it
        raise exc
    status, code, field = found
    errors = [FieldError(field, str(exc), code)] if field else []
    return problem_response_for_scope(request.scope, status=status, code=code, detail=str(exc), errors=errors)


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_storage_full(exc):  # any other I/O or database error stays a 500
        raise exc
    return problem_response_for_scope(
        request.scope, status=507, code="storage_full", detail=STORAGE_FULL_DETAIL
    )


def install_domain_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GalleryError, _domain_error)
    app.add_exception_handler(ThresholdError, _domain_error)
    app.add_exception_handler(sqlite3.Error, _storage_error)
    app.add_exception_handler(OSError, _storage_error)
