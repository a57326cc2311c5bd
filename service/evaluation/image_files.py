"""Image files → RGB arrays for evaluation, through the service's own decoder where it can.

The service accepts JPEG, PNG, WebP and BMP uploads. Research data sets also come as PGM/PPM (ORL) or
TIFF: those formats, and only those the service refuses as ``unsupported_format``, are opened with
Pillow directly (EXIF orientation applied, converted to RGB) so that evaluation can still run on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from service.pipeline.decode import ImageDecodeError, decode_image
from service.pipeline.types import ImageArray

# Evaluation reads local files the user chose: generous limits, still bounded.
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_PIXELS = 200_000_000


def read_image(path: Path) -> ImageArray:
    """The image at ``path`` as H×W×3 RGB uint8 (``ImageDecodeError`` when it is not an image)."""
    data = path.read_bytes()
    try:
        return decode_image(data, max_bytes=MAX_FILE_BYTES, max_pixels=MAX_PIXELS)
    except ImageDecodeError as error:
        if error.code != "unsupported_format":
            raise ImageDecodeError(error.code, f"{path}: {error.detail}") from error
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image) or image
        return np.ascontiguousarray(np.asarray(upright.convert("RGB"), dtype=np.uint8))
