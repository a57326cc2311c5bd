"""Request images → the bytes and names the use cases take (``ImageInput``).

An image comes as a multipart upload or, in a JSON body, as base64 text (plain, or a ``data:`` URL
whose media type is ignored: the bytes say what they are, as with an upload). Both end in the same
``ImageInput``, named by the same field, so every later check and error is the same.

Base64 text is measured before it is decoded: text longer than ``FACE_MAX_IMAGE_BYTES`` of image can
take is refused as a too large upload is (413 ``too_large``) without a byte decoded. URLs are refused
and never fetched: fetching an address a caller names would let any caller make the service request
hosts of its own network (server-side request forgery).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Sequence

from fastapi import UploadFile
from fastapi.exceptions import RequestValidationError
from pydantic_core import PydanticCustomError

from service.pipeline.decode import ImageDecodeError
from service.usecases.errors import InvalidImageError
from service.usecases.images import ImageInput
from service.usecases.threads import in_worker

# A scheme and a colon: never base64 (whose alphabet has no colon), so always a URL or a typo of one.
_URL_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*):")
# Line breaks and spaces of wrapped base64 (`base64 photo.jpg` wraps at 76 columns) are dropped.
_WHITESPACE = b" \t\r\n"
URLS_NOT_FETCHED = (
    "URLs are not fetched: the service never downloads from an address a caller gives (that would "
    "let any caller reach hosts on the service's own network); send the image itself, base64-encoded"
)


def base64_payload(text: str) -> str:
    """The base64 part of an image field's text (a ``data:`` URL's header removed); a URL or a data:
    URL that is not base64: a validation error (``url_not_fetched``, ``data_url_not_base64``).

    Cheap: only the start of the text is looked at; the base64 itself is checked when decoded.
    """
    scheme = _URL_SCHEME.match(text[:64])
    if scheme is None:
        return text
    if scheme.group(1).lower() != "data":
        raise PydanticCustomError("url_not_fetched", URLS_NOT_FETCHED)
    header, comma, payload = text.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise PydanticCustomError(
            "data_url_not_base64", "a data: URL must be base64 (data:image/jpeg;base64,...)"
        )
    return payload


def max_base64_chars(max_bytes: int) -> int:
    """The longest base64 text of an image within ``max_bytes``: padded length plus line breaks."""
    padded = 4 * math.ceil(max_bytes / 3)
    return padded + padded // 32 + 64  # a line break every 64 characters or more (PEM, MIME: 76)


def decode_base64(payload: str, field: str, loc: tuple[str | int, ...], max_bytes: int) -> bytes:
    """``payload``'s bytes; too long: ``InvalidImageError`` (too_large), not base64: 422 naming ``loc``.

    The decoded bytes meet the decoder's own limit check next, exactly as uploaded bytes do.
    """
    limit = max_base64_chars(max_bytes)
    if len(payload) > limit:
        detail = (
            f"the base64 text is {len(payload)} characters; an image within the limit of {max_bytes} "
            f"bytes takes at most {limit}"
        )
        raise InvalidImageError(field, ImageDecodeError("too_large", detail))
    try:
        return base64.b64decode(payload.encode("ascii").translate(None, _WHITESPACE), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        reason = "not ASCII" if isinstance(exc, UnicodeEncodeError) else str(exc)
        raise RequestValidationError(
            [{"type": "base64_invalid", "loc": ("body", *loc), "msg": f"not valid base64 ({reason})"}]
        ) from None


async def read_upload(upload: UploadFile) -> bytes:
    try:
        return await upload.read()
    finally:
        await upload.close()


async def _image_input(
    source: UploadFile | str, field: str, loc: tuple[str | int, ...], max_bytes: int
) -> ImageInput:
    if isinstance(source, str):
        # Off the event loop: a large image's text takes tens of milliseconds to decode.
        return ImageInput(await in_worker(decode_base64, source, field, loc, max_bytes), field)
    return ImageInput(await read_upload(source), field, source.filename)


async def image_input(source: UploadFile | str, field: str, max_bytes: int) -> ImageInput:
    """One image (an upload, or a JSON field's base64 payload), named by its field."""
    return await _image_input(source, field, (field,), max_bytes)


async def image_inputs(sources: Sequence[UploadFile | str], field: str, max_bytes: int) -> list[ImageInput]:
    """A list field's images, each named ``field[i]``, in request order."""
    return [
        await _image_input(source, f"{field}[{index}]", (field, index), max_bytes)
        for index, source in enumerate(sources)
    ]
