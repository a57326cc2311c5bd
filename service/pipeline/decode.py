"""Image bytes -> H×W×3 RGB uint8, with size limits checked before any pixel is decoded.

Formats: JPEG (and MPO, the multi-picture JPEG some cameras write), PNG, WebP, BMP. The first frame of
an animated PNG/WebP is used. EXIF orientation is applied. Transparent images are composited on white.

Why the format is identified through Pillow's plugin registry instead of ``Image.open``: ``Image.open``
runs Pillow's decompression-bomb check against the process-wide ``Image.MAX_IMAGE_PIXELS`` (a warning
above it, an error above twice it). Changing that global, or turning its warning into an error with
``warnings.catch_warnings`` (not thread-safe), would affect every other user of Pillow in the process.
Opening with the format's own factory parses only the header, so our own ``max_pixels`` is applied
first; any ``DecompressionBombError``/``Warning`` Pillow might still raise later becomes our
``too_many_pixels`` error.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import BmpImagePlugin, Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from service.pipeline.types import ImageArray

# Formats we accept, with the factory Pillow registers for each (JPEG's factory also recognises MPO).
_ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "BMP")
_PLUGIN_MODULES: Final = (JpegImagePlugin, PngImagePlugin, WebPImagePlugin, BmpImagePlugin)  # registers them
_HEADER_BYTES: Final = 16  # what Pillow's ``accept`` functions look at
_BACKGROUND: Final = (255, 255, 255, 255)  # transparent pixels become white

# Pillow raises these when a header or the pixel data is malformed or cut short.
_PILLOW_DATA_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


class ImageDecodeError(ValueError):
    """An upload that cannot be turned into an RGB image.

    ``code`` is one of: ``empty``, ``too_large``, ``too_many_pixels``, ``not_an_image``,
    ``unsupported_format``, ``truncated``; ``detail`` is a sentence for humans.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageArray:
    """Decode an uploaded image to a C-contiguous H×W×3 RGB uint8 array.

    Raises ``ImageDecodeError`` for empty or oversized input, unknown or unsupported formats, images
    with more than ``max_pixels`` pixels (checked from the header, before decoding) and truncated or
    corrupt pixel data (never a partially grey image).
    """
    if not data:
        raise ImageDecodeError("empty", "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageDecodeError("too_large", f"the image is {len(data)} bytes; the limit is {max_bytes}")

    with _open_header(data) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                "too_many_pixels",
                f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}",
            )
        image_format = image.format or "image"
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ImageDecodeError("too_many_pixels", str(error)) from error
        except _PILLOW_DATA_ERRORS as error:
            raise ImageDecodeError(
                "truncated", f"the {image_format} pixel data is truncated or corrupt ({error})"
            ) from error
        upright = _apply_exif_orientation(image)
        return _to_rgb_array(upright)


def _open_header(data: bytes) -> ImageFile.ImageFile:
    """Identify the format from the magic bytes and parse only the header."""
    prefix = data[:_HEADER_BYTES]
    image_format = _identify_format(prefix)
    if image_format is None:
        raise ImageDecodeError("not_an_image", "the data is not an image in any format this service knows")
    if image_format not in _ALLOWED_FORMATS:
        raise ImageDecodeError(
            "unsupported_format",
            f"{image_format} images are not accepted; send JPEG, PNG, WebP or BMP",
        )
    factory, _ = Image.OPEN[image_format]
    try:
        image = factory(io.BytesIO(data), "")
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("too_many_pixels", str(error)) from error
    except _PILLOW_DATA_ERRORS as error:
        raise ImageDecodeError(
            "truncated", f"the {image_format} header is truncated or corrupt ({error})"
        ) from error
    if not isinstance(image, ImageFile.ImageFile):
        raise ImageDecodeError("not_an_image", f"Pillow could not open the {image_format} data")
    return image


def _identify_format(prefix: bytes) -> str | None:
    """The Pillow format whose signature matches ``prefix``; our formats are checked first."""
    found = _first_accepting(prefix, _ALLOWED_FORMATS)
    if found is None:
        Image.init()  # loads Pillow's other plugins (idempotent), only to name what we refuse
        found = _first_accepting(prefix, tuple(name for name in Image.OPEN if name not in _ALLOWED_FORMATS))
    return found


def _first_accepting(prefix: bytes, formats: tuple[str, ...]) -> str | None:
    for name in formats:
        _, accept = Image.OPEN[name]
        # ``accept`` may return a warning string ("maybe this format"): only a plain True counts.
        if accept is None:
            continue
        try:
            accepted = accept(prefix)
        except (struct.error, IndexError, ValueError):
            # Some of Pillow's signature checks assume a few bytes exist; a shorter prefix is no match.
            continue
        if accepted is True:
            return name
    return None


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        upright = ImageOps.exif_transpose(image)
    except _PILLOW_DATA_ERRORS:
        # A malformed EXIF block is common in the wild; the pixels themselves are fine.
        return image
    return upright if upright is not None else image


def _to_rgb_array(image: Image.Image) -> ImageArray:
    # Any alpha channel or transparency key (RGBA, LA, PA, P or RGB with tRNS) is composited on white.
    convert = (
        _composite_on_white
        if image.has_transparency_data
        else _MODE_CONVERTERS.get(image.mode, _convert_plain)
    )
    rgb = convert(image)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _convert_plain(image: Image.Image) -> npt.NDArray[np.uint8]:
    # Greyscale, 1-bit, CMYK (Pillow inverts Adobe CMYK JPEGs), YCbCr, LAB: Pillow's conversion.
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _composite_on_white(image: Image.Image) -> npt.NDArray[np.uint8]:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _BACKGROUND)
    return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"), dtype=np.uint8)


def _sixteen_bit_grey(image: Image.Image) -> npt.NDArray[np.uint8]:
    # Pillow's convert("RGB") clips 16-bit values at 255 instead of scaling them; scale 0..65535 -> 0..255.
    grey16 = np.asarray(image, dtype=np.float64)
    grey8 = np.clip(np.rint(grey16 / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(grey8[:, :, None], 3, axis=2)


_Converter = Callable[[Image.Image], npt.NDArray[np.uint8]]
_MODE_CONVERTERS: Mapping[str, _Converter] = MappingProxyType(
    {
        "RGB": lambda image: np.asarray(image, dtype=np.uint8),
        "I;16": _sixteen_bit_grey,
        "I;16L": _sixteen_bit_grey,
        "I;16B": _sixteen_bit_grey,
        "I;16N": _sixteen_bit_grey,
        "I": _sixteen_bit_grey,  # PNG/BMP store at most 16 bits per grey sample
    }
)
