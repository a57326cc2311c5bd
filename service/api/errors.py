"""RFC 7807 problem details for every error the API returns (``application/problem+json``).

Body: ``{type, title, status, detail, instance, request_id, errors: [{field, reason, code?}]}``.
Handlers cover our own ``ApiError``, Starlette's HTTP errors (404 unknown route, 405 wrong method),
request validation (422, or 400 for a body that is not JSON) and, last, unexpected exceptions (500,
with no internals in the body). Validation errors never echo the offending input: it may be image
bytes or a key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from service.api.allowed_methods import allowed_methods

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-ID"
_TYPE_PREFIX = "urn:face-service:problem:"


@dataclass(frozen=True)
class FieldError:
    field: str  # where: "body.name", "query.limit", "images[2]"
    reason: str  # human explanation
    code: str | None = None  # machine code when there is one (e.g. "no_face")

    def as_dict(self) -> dict[str, str]:
        item = {"field": self.field, "reason": self.reason}
        if self.code is not None:
            item["code"] = self.code
        return item


class ApiError(Exception):
    """An error with an HTTP status and a stable machine code (the problem ``type``)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = tuple(errors)
        self.headers = headers or {}


def problem_type(code: str) -> str:
    return _TYPE_PREFIX + code


def request_id_of(scope: Scope) -> str | None:
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def problem_body(
    *,
    status: int,
    code: str,
    detail: str,
    instance: str,
    request_id: str | None,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
) -> dict[str, Any]:
    return {
        "type": problem_type(code),
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        "request_id": request_id,
        "errors": [error.as_dict() for error in errors],
    }


def problem_response_for_scope(
    scope: Scope,
    *,
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem response built from the raw ASGI scope (usable by middleware and handlers alike)."""
    request_id = request_id_of(scope)
    body = problem_body(
        status=status,
        code=code,
        detail=detail,
        instance=str(scope.get("path", "")),
        request_id=request_id,
        title=title,
        errors=errors,
    )
    all_headers = dict(headers or {})
    if request_id:
        all_headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(body, status_code=status, headers=all_headers, media_type=PROBLEM_MEDIA_TYPE)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "content_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    503: "unavailable",
}


def _field_name(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ApiError):  # registered for ApiError only; keeps mypy's handler type simple
        raise exc
    return problem_response_for_scope(
        request.scope,
        status=exc.status,
        code=exc.code,
        detail=exc.detail,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        raise exc
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).description
    if status == 404 and detail == "Not Found":
        detail = f"no route {request.url.path}"
    elif status == 405 and detail == "Method Not Allowed":
        detail = f"method {request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers) if exc.headers else {}
    if status == 405:  # every method of the path, not only those of the first route that matched it
        headers["Allow"] = ", ".join(allowed_methods(request.app.router.routes, request.scope))
    return problem_response_for_scope(
        request.scope,
        status=status,
        code=_STATUS_CODES.get(status, "http_error"),
        detail=detail,
        headers=headers or None,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        raise exc
    raw = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in raw):
        return problem_response_for_scope(
            request.scope,
            status=400,
            code="malformed_json",
            detail="the request body is not valid JSON",
            errors=[FieldError("body", "JSON decode error", "json_invalid")],
        )
    errors = [
        FieldError(_field_name(error.get("loc", ())), str(error.get("msg", "invalid")), error.get("type"))
        for error in raw
    ]
    return problem_response_for_scope(
        request.scope,
        status=422,
        code="validation_error",
        detail="the request has invalid or missing fields",
        errors=errors,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log (the server also logs it); the client gets no internals.
    logger.error(
        "unhandled %s on %s %s (request %s)",
        type(exc).__name__,
        request.method,
        request.url.path,
        request_id_of(request.scope),
    )
    return problem_response_for_scope(
        request.scope, status=500, code="internal_error", detail="an unexpected error occurred"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected_error)
