"""Uploaded images → RGB arrays, with decode errors turned into problem responses."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.errors import ApiError, FieldError
from service.pipeline.decode import ImageDecodeError, decode_image
from service.pipeline.types import ImageArray
from service.settings import Settings

# ImageDecodeError.code → HTTP status. Limits are 413; bytes that are no image we read are 415;
# an image we recognise but cannot finish decoding is 422.
_DECODE_STATUS = {
    "too_large": 413,
    "too_many_pixels": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
    "empty": 422,
    "truncated": 422,
}


def decode_status(error: ImageDecodeError) -> int:
    return _DECODE_STATUS.get(error.code, 422)


async def read_upload(upload: UploadFile) -> bytes:
    try:
        return await upload.read()
    finally:
        await upload.close()


def decode_bytes(data: bytes, settings: Settings) -> ImageArray:
    """Decode (blocking: call it from a worker thread); raises ImageDecodeError."""
    return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


async def load_image(upload: UploadFile, field: str, settings: Settings) -> ImageArray:
    """Read and decode one upload off the event loop; a bad image is a problem naming ``field``."""
    data = await read_upload(upload)
    try:
        return await run_in_threadpool(decode_bytes, data, settings)
    except ImageDecodeError as exc:
        raise ApiError(
            decode_status(exc),
            exc.code,
            f"{field}: {exc.detail}",
            errors=[FieldError(field, exc.detail, exc.code)],
        ) from None


def check_image_count(uploads: Sequence[UploadFile], field: str, settings: Settings) -> None:
    if len(uploads) > settings.max_images_per_request:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(uploads)} images in one request; the limit is {settings.max_images_per_request}",
            errors=[FieldError(field, "too many images", "too_many_images")],
        )
