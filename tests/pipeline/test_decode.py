"""decode_image: formats, colour modes, EXIF orientation, limits and every error class."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from service.pipeline.decode import ImageDecodeError, decode_image

LIMITS = {"max_bytes": 1 << 26, "max_pixels": 1 << 26}


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo (insightface's sample t1.jpg, six faces), shrunk to keep the tests quick."""
    data = (resources.files("insightface") / "data" / "images" / "t1.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").resize((320, 222), Image.Resampling.LANCZOS)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring ``width × height`` RGB whose pixel data stops after one compressed row."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    one_row = png_chunk(b"IDAT", zlib.compress(bytes(1 + 3 * width))[:-4])
    return b"\x89PNG\r\n\x1a\n" + header + one_row


@pytest.mark.parametrize(
    ("image_format", "options"),
    [("PNG", {}), ("BMP", {}), ("WEBP", {"lossless": True})],
)
def test_lossless_formats_round_trip_exactly(photo: Image.Image, image_format: str, options: dict) -> None:
    decoded = decode_image(encode(photo, image_format, **options), **LIMITS)
    assert decoded.dtype == np.uint8
    assert decoded.shape == (photo.height, photo.width, 3)
    assert decoded.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(decoded, np.asarray(photo))


def test_jpeg_decodes_close_to_the_source(photo: Image.Image) -> None:
    decoded = decode_image(encode(photo, "JPEG", quality=95), **LIMITS)
    assert decoded.shape == (photo.height, photo.width, 3)
    assert np.abs(decoded.astype(int) - np.asarray(photo, dtype=int)).mean() < 3.0


def test_greyscale_and_one_bit_become_three_equal_channels(photo: Image.Image) -> None:
    grey = photo.convert("L")
    for image in (grey, grey.convert("1")):
        decoded = decode_image(encode(image, "PNG"), **LIMITS)
        assert decoded.shape == (photo.height, photo.width, 3)
        np.testing.assert_array_equal(decoded[..., 0], decoded[..., 2])
        np.testing.assert_array_equal(decoded[..., 0], np.asarray(image.convert("L")))


def test_palette_image_keeps_its_colours(photo: Image.Image) -> None:
    palette = photo.quantize(colors=64)
    decoded = decode_image(encode(palette, "PNG"), **LIMITS)
    np.testing.assert_array_equal(decoded, np.asarray(palette.convert("RGB")))


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    levels = (np.arange(256, dtype=np.uint16).reshape(16, 16)) * 257  # 0 .. 65535
    decoded = decode_image(encode(Image.fromarray(levels), "PNG"), **LIMITS)
    np.testing.assert_array_equal(decoded[..., 1], levels // 257)


def test_transparency_is_composited_on_white(photo: Image.Image) -> None:
    rgba = photo.convert("RGBA")
    alpha = np.full((photo.height, photo.width), 255, dtype=np.uint8)
    alpha[:, : photo.width // 2] = 0  # left half fully transparent
    alpha[:, photo.width // 2 :][:10] = 128  # a half-transparent band
    rgba.putalpha(Image.fromarray(alpha))
    decoded = decode_image(encode(rgba, "PNG"), **LIMITS)
    source = np.asarray(photo, dtype=np.float64)
    assert (decoded[:, : photo.width // 2] == 255).all()
    np.testing.assert_array_equal(
        decoded[10:, photo.width // 2 :], np.asarray(photo)[10:, photo.width // 2 :]
    )
    blended = source[:10, photo.width // 2 :] * (128 / 255) + 255 * (127 / 255)
    assert np.abs(decoded[:10, photo.width // 2 :] - blended).max() <= 1.5


def test_cmyk_jpeg_becomes_rgb(photo: Image.Image) -> None:
    decoded = decode_image(encode(photo.convert("CMYK"), "JPEG", quality=95), **LIMITS)
    assert decoded.shape == (photo.height, photo.width, 3)
    assert np.abs(decoded.astype(int) - np.asarray(photo, dtype=int)).mean() < 6.0


# EXIF orientation -> the transpose that produced the stored pixels from the upright image.
STORED_FOR_ORIENTATION = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,  # stored rotated 90° counter-clockwise; viewers turn it clockwise
    8: Image.Transpose.ROTATE_270,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
}


@pytest.mark.parametrize("orientation", sorted(STORED_FOR_ORIENTATION))
def test_exif_orientation_is_applied(photo: Image.Image, orientation: int) -> None:
    stored = photo.transpose(STORED_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(encode(stored, "PNG", exif=exif.tobytes()), **LIMITS)
    np.testing.assert_array_equal(decoded, np.asarray(photo))


def test_first_frame_of_an_animation(photo: Image.Image) -> None:
    second = Image.new("RGB", photo.size, (255, 0, 0))
    data = encode(photo, "WEBP", save_all=True, append_images=[second], lossless=True)
    np.testing.assert_array_equal(decode_image(data, **LIMITS), np.asarray(photo))


def test_empty() -> None:
    with pytest.raises(ImageDecodeError) as error:
        decode_image(b"", **LIMITS)
    assert error.value.code == "empty"


def test_too_many_bytes(photo: Image.Image) -> None:
    data = encode(photo, "PNG")
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data, max_bytes=len(data) - 1, max_pixels=1 << 26)
    assert error.value.code == "too_large"
    assert str(len(data)) in error.value.detail
    assert isinstance(error.value, ValueError)


def test_too_many_pixels_is_refused_from_the_header_alone() -> None:
    # 3000 × 2000 declared, one row of pixel data: only a header check can answer "too many pixels".
    data = png_header_only(3_000, 2_000)
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data, max_bytes=1 << 20, max_pixels=5_999_999)
    assert error.value.code == "too_many_pixels"
    with pytest.raises(ImageDecodeError) as error:  # the same bytes within the limit: truncated
        decode_image(data, max_bytes=1 << 20, max_pixels=6_000_000)
    assert error.value.code == "truncated"


def test_our_pixel_limit_replaces_pillows_global_one() -> None:
    before = Image.MAX_IMAGE_PIXELS
    bomb = png_header_only(12_000, 8_000)  # 96 Mpx: above Pillow's warning level
    assert before is not None
    assert before < 12_000 * 8_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail the test
        with pytest.raises(ImageDecodeError) as error:
            decode_image(bomb, max_bytes=1 << 26, max_pixels=40_000_000)
    assert error.value.code == "too_many_pixels"
    assert before == Image.MAX_IMAGE_PIXELS


def test_pixel_limit_is_inclusive(photo: Image.Image) -> None:
    data = encode(photo, "PNG")
    assert decode_image(data, max_bytes=1 << 26, max_pixels=photo.width * photo.height).shape[:2] == (
        photo.height,
        photo.width,
    )
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data, max_bytes=1 << 26, max_pixels=photo.width * photo.height - 1)
    assert error.value.code == "too_many_pixels"


@pytest.mark.parametrize(
    "data", [b"hello, this is plain text", bytes(200), b"%PDF-1.7\n" + bytes(100), b"\x00", b"ab", b"abc"]
)
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data, **LIMITS)
    assert error.value.code == "not_an_image"


@pytest.mark.parametrize("image_format", ["GIF", "TIFF", "ICO", "PPM"])
def test_other_image_formats_are_unsupported(photo: Image.Image, image_format: str) -> None:
    with pytest.raises(ImageDecodeError) as error:
        decode_image(encode(photo.resize((64, 44)), image_format), **LIMITS)
    assert error.value.code == "unsupported_format"
    assert image_format in error.value.detail


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP", "BMP"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.97])
def test_truncated_data_is_an_error_not_a_grey_image(
    photo: Image.Image, image_format: str, keep: float
) -> None:
    data = encode(photo, image_format)
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data[: int(len(data) * keep)], **LIMITS)
    assert error.value.code == "truncated"


def test_real_photos_of_the_shared_set_decode(shared_faces) -> None:
    paths = sorted(p for p in (shared_faces / "deepface_testset").rglob("*") if p.suffix in {".jpg", ".webp"})
    assert paths
    for path in paths[::6]:
        image = decode_image(path.read_bytes(), max_bytes=16 << 20, max_pixels=40_000_000)
        with Image.open(path) as reference:
            width, height = reference.size
        assert image.shape in {(height, width, 3), (width, height, 3)}  # EXIF may swap the sides
