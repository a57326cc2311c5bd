"""Domain errors → problem responses: ONE table for every error the use cases, the gallery and the
thresholds raise (most specific class first through the MRO).

Image decode errors take their status from the decoder's code (limits 413, bytes that are no image we
read 415, an image we recognise but cannot finish decoding 422). A full disk (SQLite's "database or
disk is full", PostgreSQL's SQLSTATE 53100, ENOSPC, EFBIG, EDQUOT) from any write is 507
``storage_full``: the write was rolled back, so the client may retry once space is freed. A shared
database that cannot be reached is 503 ``gallery_unavailable`` with Retry-After: nothing was changed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.api.errors import ApiError, FieldError, problem_response_for_scope
from service.auth.keys import KeyStoreUnavailableError
from service.gallery.archive import ArchiveError, ArchiveVersionError
from service.gallery.gallery import EmptySubjectError
from service.gallery.store import (
    FaceNotFoundError,
    GalleryError,
    ImportClashError,
    InvalidCursorError,
    StoreUnavailableError,
    SubjectNotFoundError,
    is_storage_full,
)
from service.usecases.errors import (
    BusyError,
    CollectionNotFoundError,
    DuplicateNameRefusedError,
    EmbeddingPackMismatchError,
    FaceHasNoCropError,
    FaceIndexOutOfRangeError,
    FacesWithoutCropError,
    ImportConflictError,
    InvalidEmbeddingError,
    InvalidImageError,
    InvalidVerifyRequestError,
    KeyCollectionsRefusedError,
    KeyNotFoundError,
    MetadataValueWithoutKeyError,
    NoFaceAcceptedError,
    NoFaceError,
    SelfMergeError,
    TargetSubjectNotFoundError,
    TooManyImagesError,
    UseCaseError,
)
from service.usecases.thresholds import ThresholdError

STORAGE_FULL_DETAIL = (
    "the service's storage is full: nothing from this request was stored; retry once space is freed"
)

# ImageDecodeError.code → HTTP status (anything else the decoder says: 422).
DECODE_STATUS = {
    "too_large": 413,
    "too_many_pixels": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
    "empty": 422,
    "truncated": 422,
}

ToProblem = Callable[[Exception], ApiError]


def _plain(status: int, code: str, field: str | None = None) -> ToProblem:
    """An error whose message is the detail, about one field or none."""

    def convert(exc: Exception) -> ApiError:
        errors = [FieldError(field, str(exc), code)] if field else []
        return ApiError(status, code, str(exc), errors=errors)

    return convert


def _refusal(
    status: Callable[[UseCaseError], int], headers: Callable[[UseCaseError], dict[str, str]] | None = None
) -> ToProblem:
    """A use case's refusal: its own code, detail and fields; the status (and headers) from the error."""

    def convert(exc: Exception) -> ApiError:
        if not isinstance(exc, UseCaseError):  # the table maps UseCaseError classes only to this
            raise TypeError(f"{type(exc).__name__} is not a UseCaseError")
        errors = [FieldError(p.field, p.reason, p.code) for p in exc.problems]
        extra = headers(exc) if headers is not None else None
        return ApiError(status(exc), exc.code, exc.detail, errors=errors, headers=extra)

    return convert


def _always(status: int) -> Callable[[UseCaseError], int]:
    return lambda _: status


def _decode_status(exc: UseCaseError) -> int:
    return DECODE_STATUS.get(exc.code, 422)


def _retry_after(exc: UseCaseError) -> dict[str, str]:
    return {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, BusyError) else {}


# A shared database that is down: nothing was changed; the pool reconnects once it is back.
GALLERY_UNAVAILABLE_RETRY_AFTER_S = 2


# Fixed details, not the exceptions' text: that names the database host (logged, not a client's business).
def _gallery_unavailable(_: Exception) -> ApiError:
    return ApiError(
        503,
        "gallery_unavailable",
        "the gallery database cannot be reached: nothing was changed; retry shortly",
        headers={"Retry-After": str(GALLERY_UNAVAILABLE_RETRY_AFTER_S)},
    )


def _keys_unavailable(_: Exception) -> ApiError:
    return ApiError(
        503,
        "keys_unavailable",
        "the API key store cannot be reached: the key was neither accepted nor refused; retry shortly",
        headers={"Retry-After": str(GALLERY_UNAVAILABLE_RETRY_AFTER_S)},
    )


DOMAIN_ERRORS: dict[type[Exception], ToProblem] = {
    KeyStoreUnavailableError: _keys_unavailable,
    SubjectNotFoundError: _plain(404, "subject_not_found"),
    FaceNotFoundError: _plain(404, "face_not_found"),
    StoreUnavailableError: _gallery_unavailable,
    InvalidCursorError: _plain(422, "invalid_cursor", "query.cursor"),
    EmptySubjectError: _plain(409, "subject_has_no_faces"),
    ThresholdError: _plain(422, "invalid_threshold", "threshold"),
    InvalidImageError: _refusal(_decode_status),
    BusyError: _refusal(_always(503), _retry_after),
    NoFaceError: _refusal(_always(422)),
    FaceIndexOutOfRangeError: _refusal(_always(422)),
    InvalidVerifyRequestError: _refusal(_always(422)),
    NoFaceAcceptedError: _refusal(_always(422)),
    TooManyImagesError: _refusal(_always(413)),
    KeyNotFoundError: _refusal(_always(404)),
    KeyCollectionsRefusedError: _refusal(_always(422)),
    SelfMergeError: _refusal(_always(422)),
    InvalidEmbeddingError: _refusal(_always(422)),
    EmbeddingPackMismatchError: _refusal(_always(409)),
    DuplicateNameRefusedError: _refusal(_always(409)),
    MetadataValueWithoutKeyError: _refusal(_always(422)),
    FaceHasNoCropError: _refusal(_always(404)),
    TargetSubjectNotFoundError: _refusal(_always(404)),
    ArchiveVersionError: _plain(422, "unsupported_archive_version", "file"),
    ArchiveError: _plain(422, "invalid_archive", "file"),
    ImportClashError: _plain(409, "import_conflict"),
    ImportConflictError: _refusal(_always(409)),
    FacesWithoutCropError: _refusal(_always(422)),
    CollectionNotFoundError: _refusal(_always(404)),
}


def problem_for(exc: Exception) -> ApiError | None:
    """The problem ``exc`` maps to, or None when it has no client meaning (a 500)."""
    for cls in type(exc).__mro__:
        convert = DOMAIN_ERRORS.get(cls)
        if convert is not None:
            return convert(exc)
    return None


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    problem = problem_for(exc)
    if problem is None:  # e.g. a GalleryError with no client meaning: let the 500 handler take it
        raise exc
    return problem_response_for_scope(
        request.scope,
        status=problem.status,
        code=problem.code,
        detail=problem.detail,
        errors=problem.errors,
        headers=problem.headers or None,
    )


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    if not is_storage_full(exc):  # any other I/O or database error stays a 500
        raise exc
    return problem_response_for_scope(
        request.scope, status=507, code="storage_full", detail=STORAGE_FULL_DETAIL
    )


def install_domain_error_handlers(app: FastAPI) -> None:
    for cls in (GalleryError, ThresholdError, UseCaseError, KeyStoreUnavailableError):
        app.add_exception_handler(cls, _domain_error)
    app.add_exception_handler(sqlite3.Error, _storage_error)
    app.add_exception_handler(psycopg.Error, _storage_error)  # PostgreSQL's disk full (SQLSTATE 53100)
    app.add_exception_handler(OSError, _storage_error)
