"""Uploaded images → RGB arrays, with decode errors turned into problem responses.

Every decode reserves its decoded pixels in the app's ``PixelBudget`` first (``AppServices``) and
keeps them reserved while the image is in use: the single-image routes for as long as they hold the
pixels (``held_image``: decode, detect, align, embed), enrollment for decode + detect + align of each
image (``service.api.enrollment``). No room within ``FACE_DECODE_BUDGET_WAIT_S``: 503 ``busy`` with
Retry-After.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.errors import ApiError, FieldError
from service.api.state import AppServices
from service.pipeline.decode import ImageDecodeError, OpenedImage, open_image
from service.pipeline.pixel_budget import PixelBudgetBusyError
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


def open_upload(data: bytes, settings: Settings, *, draft: bool = False) -> OpenedImage:
    """Parse the header and check the limits (blocking, but brief); raises ImageDecodeError.

    ``draft``: decode large JPEGs at a reduced scale (see ``Settings.jpeg_draft_min_side``). Only
    where no pixel coordinates are returned to the caller (enrollment): the routes that answer with
    boxes and landmarks report them in the uploaded image's own pixel frame.
    """
    min_side = max(settings.jpeg_draft_min_side, 2 * settings.det_input_size)
    return open_image(
        data,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft_min_side=min_side if draft and settings.jpeg_draft_min_side > 0 else 0,
    )


def busy_error(exc: PixelBudgetBusyError) -> ApiError:
    return ApiError(
        503,
        "busy",
        f"the server is decoding as many images as its memory budget allows; retry in {exc.retry_after_s} s",
        headers={"Retry-After": str(exc.retry_after_s)},
    )


@asynccontextmanager
async def held_image(upload: UploadFile, field: str, services: AppServices) -> AsyncIterator[ImageArray]:
    """One upload decoded off the event loop, its pixels reserved in the budget until the block ends.

    A bad image is a problem naming ``field``; no room in the budget in time is 503 ``busy``.
    """
    data = await read_upload(upload)
    try:
        opened = await run_in_threadpool(open_upload, data, services.settings)
    except ImageDecodeError as exc:
        raise _decode_problem(exc, field) from None
    with opened:
        try:
            async with services.pixel_budget.hold(opened.decoded_pixels):
                yield await _decoded(opened, field)
        except PixelBudgetBusyError as exc:  # only the reservation raises it
            raise busy_error(exc) from None


async def _decoded(opened: OpenedImage, field: str) -> ImageArray:
    try:
        return await run_in_threadpool(opened.decode)
    except ImageDecodeError as exc:
        raise _decode_problem(exc, field) from None


def _decode_problem(exc: ImageDecodeError, field: str) -> ApiError:
    errors = [FieldError(field, exc.detail, exc.code)]
    return ApiError(decode_status(exc), exc.code, f"{field}: {exc.detail}", errors=errors)


def check_image_count(uploads: Sequence[UploadFile], field: str, settings: Settings) -> None:
    if len(uploads) > settings.max_images_per_request:
        raise ApiError(
            413,
            "too_many_images",
            f"{len(uploads)} images in one request; the limit is {settings.max_images_per_request}",
            errors=[FieldError(field, "too many images", "too_many_images")],
        )
