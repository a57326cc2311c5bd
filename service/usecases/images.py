"""Image bytes → RGB pixels, within the service's ``PixelBudget``.

Every decode reserves its decoded pixels in the budget first and keeps them reserved while the image
is in use: the single-image use cases for as long as they hold the pixels (``held_pixels``: decode,
detect, align, embed), enrollment for decode + detect + align of each image
(``service.usecases.enroll``). No room within ``FACE_DECODE_BUDGET_WAIT_S``: ``BusyError``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.pipeline.decode import ImageDecodeError, OpenedImage, open_image
from service.pipeline.pixel_budget import PixelBudgetBusyError
from service.pipeline.types import ImageArray
from service.settings import Settings
from service.usecases.errors import BusyError, InvalidImageError
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


@dataclass(frozen=True)
class ImageInput:
    """An image's bytes and the name the caller gave it (errors name it: ``image_a``, ``images[2]``)."""

    data: bytes
    field: str
    filename: str | None = None


def open_image_bytes(data: bytes, settings: Settings, *, draft: bool = False) -> OpenedImage:
    """Parse the header and check the limits (blocking, but brief); raises ImageDecodeError.

    ``draft``: decode large JPEGs at a reduced scale (see ``Settings.jpeg_draft_min_side``). Only
    where no pixel coordinates are returned to the caller (enrollment): the use cases that answer with
    boxes and landmarks report them in the uploaded image's own pixel frame.
    """
    min_side = max(settings.jpeg_draft_min_side, 2 * settings.det_input_size)
    return open_image(
        data,
        max_bytes=settings.max_image_bytes,
        max_pixels=settings.max_image_pixels,
        draft_min_side=min_side if draft and settings.jpeg_draft_min_side > 0 else 0,
    )


@asynccontextmanager
async def held_pixels(resources: ServiceResources, image: ImageInput) -> AsyncIterator[ImageArray]:
    """One image decoded off the event loop, its pixels reserved in the budget until the block ends.

    Bytes that are no image: ``InvalidImageError`` naming the input; no room in time: ``BusyError``.
    """
    try:
        opened = await in_worker(open_image_bytes, image.data, resources.settings)
    except ImageDecodeError as exc:
        raise InvalidImageError(image.field, exc) from None
    with opened:
        async with reserved(resources, opened):
            try:
                pixels = await in_worker(opened.decode)
            except ImageDecodeError as exc:
                raise InvalidImageError(image.field, exc) from None
            yield pixels


@asynccontextmanager
async def reserved(resources: ServiceResources, opened: OpenedImage) -> AsyncIterator[None]:
    """The opened image's decoded pixels reserved in the budget; ``BusyError`` when none frees in time."""
    try:
        async with resources.pixel_budget.hold(opened.decoded_pixels):
            yield
    except PixelBudgetBusyError as exc:  # only the reservation raises it
        raise BusyError(exc.retry_after_s) from None
