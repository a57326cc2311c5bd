"""Make the generated OpenAPI document say what the API really answers on errors.

FastAPI documents error responses as ``application/json`` and adds a default 422 with its own
``HTTPValidationError`` model, but every error this API sends is an RFC 7807 problem
(``application/problem+json``, the ``Problem`` model; see ``errors.py``). Clients and schema-driven
fuzzers (schemathesis) read the document, so it is rewritten once, when first requested:

- every 4xx/5xx response's content becomes ``application/problem+json`` with the ``Problem`` schema;
- operations with a request body also document 413 (the body size limit, enforced by middleware
  before routing) and 400 (a body that is not valid JSON, or a malformed ``Content-Length``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.api.errors import PROBLEM_MEDIA_TYPE
from service.api.schemas import Problem

_PROBLEM_REF = "#/components/schemas/Problem"
_UNUSED_FASTAPI_MODELS = ("HTTPValidationError", "ValidationError")

# Errors any operation with a request body can get, whatever its route declares.
_BODY_ERRORS = {
    "400": "malformed request: invalid JSON body or Content-Length",
    "413": "the request body is larger than FACE_MAX_REQUEST_BYTES",
}


def _problem_content() -> dict[str, Any]:
    return {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _PROBLEM_REF}}}


def _is_error(status: str) -> bool:
    return status.isdigit() and int(status) >= 400


def with_problem_errors(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (an OpenAPI dict, changed in place and returned) with honest error responses."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses: dict[str, Any] = operation["responses"]
            if "requestBody" in operation:
                for status, description in _BODY_ERRORS.items():
                    responses.setdefault(status, {"description": description})
            for status, response in responses.items():
                if _is_error(status):
                    response["content"] = _problem_content()
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    if "Problem" not in schemas:
        schemas.update(_problem_schemas())
    for name in _UNUSED_FASTAPI_MODELS:
        schemas.pop(name, None)
    return document


def _problem_schemas() -> dict[str, Any]:
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {**definitions, "Problem": schema}


def install_problem_openapi(app: FastAPI) -> None:
    """Serve the rewritten document at ``/openapi.json`` (built on first request, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = with_problem_errors(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
