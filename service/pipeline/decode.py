"""Image bytes -> H×W×3 RGB uint8, with size limits checked before any pixel is decoded.

Formats: JPEG (and MPO, the multi-picture JPEG some cameras write), PNG, WebP, BMP (uncompressed or
bit-field; RLE is refused: Pillow decodes it in Python, seconds per image), TIFF, and the Netpbm family
(PGM, PPM, PBM: face data sets such as ORL are greyscale PGM). The first frame of an animated or
multi-page image is used. EXIF orientation is applied when the metadata is readable; unreadable or
malformed metadata of any kind means "no orientation", never an error. Transparent images are composited
on white.

Large JPEGs can be decoded at a reduced scale (libjpeg's DCT scaling, Pillow's ``draft``: 1/2, 1/4 or
1/8, chosen so that the longest side stays at least ``draft_min_side``): the detector sees at most
``det_input_size`` pixels per side, so decoding 36 Mpx to feed a 640-pixel detector wastes ~100 MB.

Decoding happens in two steps so that a caller can reserve memory between them: ``open_image`` parses
the header, applies the limits and the draft scale and says how many pixels the decode will produce
(``OpenedImage.decoded_pixels``); ``OpenedImage.decode`` then decodes.

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
import math
import struct
from collections.abc import Callable, Mapping
from types import MappingProxyType, TracebackType
from typing import Final, Self

import numpy as np
import numpy.typing as npt
from PIL import (
    BmpImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    PpmImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from service.pipeline.types import ImageArray

# Formats we accept, with the factory Pillow registers for each (JPEG's factory also recognises MPO).
_ALLOWED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM")
_PLUGIN_MODULES: Final = (  # importing them registers them
    JpegImagePlugin,
    PngImagePlugin,
    WebPImagePlugin,
    BmpImagePlugin,
    TiffImagePlugin,
    PpmImagePlugin,
)
ACCEPTED_FORMATS: Final = "JPEG, PNG, WebP, BMP (not RLE), TIFF or PGM/PPM/PBM"
# Pillow names the whole Netpbm family "PPM"; say which one it was (P1/P4 PBM, P2/P5 PGM, P3/P6 PPM).
_NETPBM_NAMES: Final = {b"P1": "PBM", b"P4": "PBM", b"P2": "PGM", b"P5": "PGM", b"P3": "PPM", b"P6": "PPM"}
_BMP_RLE: Final = frozenset({1, 2})  # BI_RLE8, BI_RLE4
_ORIENTATION_TAG: Final = 0x0112
_ORIENTATION_TRANSPOSE: Final = MappingProxyType(
    {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }
)
# When libjpeg runs out of scan data (a header claiming more rows than the data holds) it fills every
# missing block with zero coefficients: exact mid-grey. This many bottom rows of it (at least 2) is
# refused as truncated; a photo never has a band of one exact value.
_JPEG_FILL_VALUES: Final = (127, 128)  # 128; 127 after Pillow inverts an Adobe CMYK JPEG
_JPEG_FILL_MIN_FRACTION: Final = 0.05
_HEADER_BYTES: Final = 16  # what Pillow's ``accept`` functions look at
_BACKGROUND: Final = (255, 255, 255, 255)  # transparent pixels become white

# Pillow raises these when a header or the pixel data is malformed or cut short.
_PILLOW_DATA_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


class ImageDecodeError(ValueError):
    """An upload that cannot be turned into an RGB image.

    ``code`` is one of: ``empty``, ``too_large``, ``too_many_pixels``, ``not_an_image``,
    ``unsupported_format``, ``truncated``; ``detail`` is a sentence for humans.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class OpenedImage:
    """An image whose header passed the limits, not decoded yet; close it (or use ``with``)."""

    def __init__(self, image: ImageFile.ImageFile, image_format: str) -> None:
        self._image = image
        self.format = image_format

    @property
    def decoded_pixels(self) -> int:
        """How many pixels ``decode`` produces (after any draft reduction)."""
        width, height = self._image.size
        return width * height

    def decode(self) -> ImageArray:
        """Decode to a C-contiguous H×W×3 RGB uint8 array (once); raises ``ImageDecodeError``.

        Pillow's copy of the pixels is released as soon as the array exists.
        """
        try:
            return self._decode()
        finally:
            self.close()

    def _decode(self) -> ImageArray:
        image = self._image
        try:
            image.load()
        except Image.DecompressionBombError as error:
            raise ImageDecodeError("too_many_pixels", str(error)) from error
        except _PILLOW_DATA_ERRORS as error:
            raise ImageDecodeError(
                "truncated", f"the {self.format} pixel data is truncated or corrupt ({error})"
            ) from error
        if self.format == "JPEG":
            _refuse_grey_filled_jpeg(image)
        upright = _apply_exif_orientation(image)
        try:
            return _to_rgb_array(upright)
        except _PILLOW_DATA_ERRORS as error:  # a mode Pillow cannot convert (e.g. odd TIFF layouts)
            raise ImageDecodeError(
                "unsupported_format", f"{self.format} images in mode {image.mode} are not accepted"
            ) from error
        finally:
            if upright is not image:
                upright.close()

    def close(self) -> None:
        self._image.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int, draft_min_side: int = 0) -> ImageArray:
    """Decode an uploaded image to a C-contiguous H×W×3 RGB uint8 array.

    Raises ``ImageDecodeError`` for empty or oversized input, unknown or unsupported formats, images
    with more than ``max_pixels`` pixels (checked from the header, before decoding) and truncated or
    corrupt pixel data (never a partially grey image). ``draft_min_side`` > 0: see ``open_image``.
    """
    with open_image(
        data, max_bytes=max_bytes, max_pixels=max_pixels, draft_min_side=draft_min_side
    ) as opened:
        return opened.decode()


def open_image(data: bytes, *, max_bytes: int, max_pixels: int, draft_min_side: int = 0) -> OpenedImage:
    """Parse the header and check the limits (no pixel is decoded); raises ``ImageDecodeError``.

    ``draft_min_side`` > 0: a JPEG at least twice that long (longest side) is decoded at the largest
    DCT reduction (1/2, 1/4, 1/8) that keeps its longest side at least ``draft_min_side``.
    ``max_pixels`` applies to the size the file declares, before any reduction.
    """
    if not data:
        raise ImageDecodeError("empty", "the image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageDecodeError("too_large", f"the image is {len(data)} bytes; the limit is {max_bytes}")

    image, image_format = _open_header(data)
    try:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                "too_many_pixels",
                f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}",
            )
        if image_format == "BMP" and image.info.get("compression") in _BMP_RLE:
            raise ImageDecodeError(
                "unsupported_format",
                f"RLE-compressed BMP images are not accepted (slow to decode); send {ACCEPTED_FORMATS}",
            )
        if image_format == "JPEG" and draft_min_side > 0:
            _draft(image, draft_min_side)
    except BaseException:
        image.close()
        raise
    return OpenedImage(image, image_format)


def _draft(image: ImageFile.ImageFile, min_side: int) -> None:
    width, height = image.size
    longest = max(width, height)
    if longest < 2 * min_side:
        return
    # The box draft scales into: the image's aspect ratio with its longest side at ``min_side``.
    image.draft(None, (math.ceil(width * min_side / longest), math.ceil(height * min_side / longest)))


def _refuse_grey_filled_jpeg(image: Image.Image) -> None:
    """Refuse a JPEG whose bottom rows are libjpeg's fill for missing scan data (see _JPEG_FILL_VALUES)."""
    width, height = image.size
    band = max(2, math.ceil(height * _JPEG_FILL_MIN_FRACTION))
    if height < band:
        return
    bottom = np.asarray(image.crop((0, height - band, width, height)))
    # A uniform image (a blank test card, a grey frame) is one value top to bottom: not a truncation,
    # and harmless (it has no face). A cut JPEG has real rows above its fill.
    top = np.asarray(image.crop((0, 0, width, 1)))
    filled = np.isin(bottom, _JPEG_FILL_VALUES).all() and (bottom == bottom.flat[0]).all()
    if filled and not (top == bottom.flat[0]).all():
        raise ImageDecodeError(
            "truncated",
            f"the JPEG pixel data is truncated: its header declares {height} rows but the bottom "
            f"{band} or more hold no data",
        )


def _open_header(data: bytes) -> tuple[ImageFile.ImageFile, str]:
    """Identify the format from the magic bytes and parse only the header: the image and its name."""
    prefix = data[:_HEADER_BYTES]
    image_format = _identify_format(prefix)
    if image_format is None:
        raise ImageDecodeError("not_an_image", "the data is not an image in any format this service knows")
    if image_format not in _ALLOWED_FORMATS:
        raise ImageDecodeError(
            "unsupported_format", f"{image_format} images are not accepted; send {ACCEPTED_FORMATS}"
        )
    name = _NETPBM_NAMES.get(prefix[:2], image_format) if image_format == "PPM" else image_format
    factory, _ = Image.OPEN[image_format]
    try:
        image = factory(io.BytesIO(data), "")
    except Image.DecompressionBombError as error:
        raise ImageDecodeError("too_many_pixels", str(error)) from error
    except _PILLOW_DATA_ERRORS as error:
        raise ImageDecodeError("truncated", f"the {name} header is truncated or corrupt ({error})") from error
    if not isinstance(image, ImageFile.ImageFile):
        raise ImageDecodeError("not_an_image", f"Pillow could not open the {name} data")
    return image, name


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
    """The image turned upright by its EXIF (or XMP) orientation; the image itself when there is none.

    Read here rather than with ``ImageOps.exif_transpose``, which also re-serialises the whole EXIF
    block and raises ``struct.error`` (and others) on tags of the wrong type. Metadata is optional:
    any error reading it, or an orientation that is not an integer 1..8, means "upright as stored".
    """
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG)
    except Exception:  # malformed metadata of any kind must not fail a decode
        return image
    if type(orientation) is not int or orientation not in _ORIENTATION_TRANSPOSE:
        return image
    return image.transpose(_ORIENTATION_TRANSPOSE[orientation])


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
