"""OpenAPI ``responses=`` tables shared by routers (documentation only)."""

from __future__ import annotations

from typing import Any

from service.api.schemas import Problem

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing, unknown or revoked API key"},
    403: {
        "model": Problem,
        "description": "the key lacks the needed scope, or is limited to other collections",
    },
}

IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    413: {"model": Problem, "description": "request or image too large (bytes or pixels)"},
    415: {"model": Problem, "description": "not an image in a supported format"},
    422: {"model": Problem, "description": "missing field, truncated image, invalid parameter, no face"},
}

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": Problem, "description": "not found"}}

SUBJECT_HAS_NO_FACES: dict[int | str, dict[str, Any]] = {
    409: {"model": Problem, "description": "the subject has no enrolled face to compare with"}
}
