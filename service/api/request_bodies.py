"""Image request bodies: a multipart form or a JSON object with the same fields, read by one dependency.

The routes that take images (detect, embed, verify, identify, enrollment) declare no form fields of
their own: ``form_or_json(FormModel, JsonModel)`` reads the body by its Content-Type into one of two
pydantic models that share every non-image field and its checks (service.api.schemas). Form values
are text, so the form model is validated in lax mode ("5" is 5, as FastAPI's Form fields take it);
the JSON model strictly (5, never "5", as its schema says). Errors are the usual 422 validation
problems naming ``body.<field>``. ``image_bodies`` documents both content types in OpenAPI.

Both bodies pass the same body size limit first (``BodySizeLimitMiddleware``: Content-Length or the
streamed bytes), before either is parsed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, get_origin

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from service.api.errors import ApiError, FieldError
from service.usecases.threads import in_worker

FormT = TypeVar("FormT", bound=BaseModel)
JsonT = TypeVar("JsonT", bound=BaseModel)

FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
JSON_MEDIA_TYPE = "application/json"


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == JSON_MEDIA_TYPE or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def _body_errors(error: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [
            {**item, "loc": ("body", *item["loc"])}
            for item in error.errors(include_url=False, include_input=False)
        ]
    )


async def _json_body(request: Request, model: type[JsonT]) -> JsonT:
    raw = await request.body()  # the size limit's HTTPException (413) passes through
    try:
        # In a worker: a body of many megabytes of base64 takes milliseconds to parse.
        return await in_worker(model.model_validate_json, raw, strict=True)
    except ValidationError as exc:
        raise _body_errors(exc) from None


async def _form(request: Request) -> FormData:
    try:
        return await request.form()
    except HTTPException:  # the size limit's 413, Starlette's 400 for a malformed multipart body
        raise
    except Exception as exc:  # as FastAPI answers for its own form fields
        raise HTTPException(400, "There was an error parsing the body") from exc


def _form_values(form: FormData, model: type[BaseModel]) -> dict[str, Any]:
    """The model's fields from ``form`` as FastAPI's Form fields take them: lists are every value of
    their name, other fields the last, an empty text value is no value."""
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if get_origin(field.annotation) is list:
            items = [item for item in form.getlist(name) if item != ""]
            if items:
                values[name] = items
        else:
            value = form.get(name)
            if value is not None and value != "":
                values[name] = value
    return values


def form_or_json(
    form_model: type[FormT], json_model: type[JsonT]
) -> Callable[[Request], AsyncIterator[FormT | JsonT]]:
    """A dependency: the body as ``form_model`` (multipart, urlencoded or no Content-Type) or
    ``json_model`` (application/json); any other Content-Type: 415. Uploads are closed afterwards."""

    async def read_body(request: Request) -> AsyncIterator[FormT | JsonT]:
        media_type = media_type_of(request)
        if _is_json(media_type):
            yield await _json_body(request, json_model)
            return
        if media_type and media_type not in FORM_MEDIA_TYPES:
            raise ApiError(
                415,
                "unsupported_media_type",
                f"a {media_type} body is not accepted here; send multipart/form-data or application/json",
                errors=[FieldError("header.content-type", "multipart/form-data or application/json")],
            )
        form = await _form(request)
        try:
            try:
                parsed = form_model.model_validate(_form_values(form, form_model))
            except ValidationError as exc:
                raise _body_errors(exc) from None
            yield parsed
        finally:
            await form.close()

    return read_body


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` (enums) written in place: nothing for components."""
    schema = model.model_json_schema(ref_template="{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            inlined = resolve(definitions[node["$ref"]]) if "$ref" in node else {}
            return inlined | {key: resolve(value) for key, value in node.items() if key != "$ref"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def image_bodies(form_model: type[BaseModel], json_model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route reading ``form_or_json``: both request bodies, with examples."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": inline_schema(form_model)},
                JSON_MEDIA_TYPE: {"schema": inline_schema(json_model)},
            },
        }
    }
