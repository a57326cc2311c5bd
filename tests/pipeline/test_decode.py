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

from service.pipeline.decode import ACCEPTED_FORMATS, ImageDecodeError, decode_image, open_image
from tests.pipeline.exif_blocks import WRONG_TYPED, Entry, exif_block, orientation

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


@pytest.mark.parametrize("image_format", ["GIF", "ICO", "PCX", "SGI", "JPEG2000"])
def test_other_image_formats_are_unsupported(photo: Image.Image, image_format: str) -> None:
    with pytest.raises(ImageDecodeError) as error:
        decode_image(encode(photo.resize((64, 44)), image_format), **LIMITS)
    assert error.value.code == "unsupported_format"
    assert image_format in error.value.detail
    assert ACCEPTED_FORMATS in error.value.detail  # says exactly what is accepted
    assert "PGM" in ACCEPTED_FORMATS
    assert "TIFF" in ACCEPTED_FORMATS


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


# ----------------------------------------------------------------------- greyscale and Netpbm / TIFF


def _orl_faces(shared_faces) -> list:
    paths = sorted((shared_faces / "orl_att_faces").rglob("*.pgm"))
    assert len(paths) == 400, len(paths)  # 40 people × 10 images
    return paths


def test_every_orl_pgm_decodes_to_its_grey_values(shared_faces) -> None:
    for path in _orl_faces(shared_faces):
        decoded = decode_image(path.read_bytes(), **LIMITS)
        with Image.open(path) as reference:
            grey = np.asarray(reference)
        assert decoded.shape == (*grey.shape, 3), path
        for channel in range(3):
            np.testing.assert_array_equal(decoded[..., channel], grey)


def _sixteen_bit(grey: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(grey, dtype=np.uint16) * 257)


# (name, how to write it from the greyscale ORL face, grey levels the decode must give back)
GREY_ENCODINGS = {
    "pgm_binary": lambda grey: encode(grey, "PPM"),  # P5
    "pgm_ascii": lambda grey: _ascii_pgm(np.asarray(grey)),  # P2
    "pgm_16bit": lambda grey: encode(_sixteen_bit(grey), "PPM"),
    "ppm_binary": lambda grey: encode(grey.convert("RGB"), "PPM"),  # P6
    "png_grey": lambda grey: encode(grey, "PNG"),
    "png_grey_16bit": lambda grey: encode(_sixteen_bit(grey), "PNG"),
    "tiff_grey": lambda grey: encode(grey, "TIFF"),
    "tiff_grey_lzw": lambda grey: encode(grey, "TIFF", compression="tiff_lzw"),
    "tiff_grey_deflate": lambda grey: encode(grey, "TIFF", compression="tiff_adobe_deflate"),
    "tiff_grey_packbits": lambda grey: encode(grey, "TIFF", compression="packbits"),
    "tiff_grey_16bit": lambda grey: encode(_sixteen_bit(grey), "TIFF"),
    "tiff_rgb": lambda grey: encode(grey.convert("RGB"), "TIFF"),
}


def _ascii_pgm(grey: np.ndarray) -> bytes:
    height, width = grey.shape
    rows = "\n".join(" ".join(str(v) for v in row) for row in grey)
    return f"P2\n# written by the test\n{width} {height}\n255\n{rows}\n".encode()


@pytest.mark.parametrize("encoding", sorted(GREY_ENCODINGS))
def test_greyscale_netpbm_png_and_tiff_are_accepted_losslessly(shared_faces, encoding: str) -> None:
    for path in _orl_faces(shared_faces)[::50]:  # 8 people
        with Image.open(path) as source:
            grey = source.convert("L")
        decoded = decode_image(GREY_ENCODINGS[encoding](grey), **LIMITS)
        assert decoded.shape == (grey.height, grey.width, 3)
        for channel in range(3):
            np.testing.assert_array_equal(decoded[..., channel], np.asarray(grey))


def test_pbm_one_bit_is_accepted(photo: Image.Image) -> None:
    bits = photo.convert("1")
    decoded = decode_image(encode(bits, "PPM"), **LIMITS)  # P4
    np.testing.assert_array_equal(decoded[..., 1], np.asarray(bits.convert("L")))


def test_multi_page_tiff_uses_the_first_page(photo: Image.Image) -> None:
    data = encode(photo, "TIFF", save_all=True, append_images=[Image.new("RGB", photo.size, (255, 0, 0))])
    np.testing.assert_array_equal(decode_image(data, **LIMITS), np.asarray(photo))


@pytest.mark.parametrize("magic", [b"P2", b"P5", b"P6", b"P1", b"P4", b"P3"])
def test_truncated_netpbm_is_truncated_and_named_exactly(magic: bytes) -> None:
    data = magic + b"\n640 480\n" + (b"" if magic in {b"P1", b"P4"} else b"255\n") + b"\x10" * 100
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data, **LIMITS)
    assert error.value.code == "truncated"
    assert {b"P1": "PBM", b"P4": "PBM", b"P2": "PGM", b"P5": "PGM"}.get(magic, "PPM") in error.value.detail


# ---------------------------------------------------------------------------------------- EXIF


def _jpeg_with_exif(image: Image.Image, block: bytes) -> bytes:
    return encode(image, "JPEG", quality=95, exif=block)


UPRIGHT_FROM_STORED = {  # EXIF orientation -> what a viewer does to the stored pixels
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@pytest.mark.parametrize("big_endian", [True, False])
@pytest.mark.parametrize("value", sorted(UPRIGHT_FROM_STORED))
def test_every_jpeg_orientation_in_either_byte_order(
    photo: Image.Image, value: int, big_endian: bool
) -> None:
    data = _jpeg_with_exif(
        photo, exif_block([orientation(value, big_endian=big_endian)], big_endian=big_endian)
    )
    stored = decode_image(encode(photo, "JPEG", quality=95), **LIMITS)
    method = UPRIGHT_FROM_STORED[value]
    expected = stored if method is None else np.asarray(Image.fromarray(stored).transpose(method))
    np.testing.assert_array_equal(decode_image(data, **LIMITS), expected)


@pytest.mark.parametrize(
    "entry",
    [
        orientation(0),
        orientation(9),
        orientation(0xFFFF),
        Entry(0x0112, 2, 2, b"6\0"),  # text "6"
        Entry(0x0112, 5, 1, b"\0\0\0\x08"),  # a rational
        Entry(0x0112, 3, 0, b"\0\x06"),  # no value
        Entry(0x0112, 11, 1, b"\x40\xc0\0\0"),  # a float 6.0
        Entry(0x0112, 12, 1, b"\0\0\0\0"),  # a double, its 8 bytes past the block
    ],
    ids=lambda entry: f"type{entry.field_type}-count{entry.count}-{entry.value.hex()}",
)
def test_an_invalid_orientation_means_upright_as_stored(photo: Image.Image, entry: Entry) -> None:
    stored = decode_image(encode(photo, "JPEG", quality=95), **LIMITS)
    decoded = decode_image(_jpeg_with_exif(photo, exif_block([entry])), **LIMITS)
    np.testing.assert_array_equal(decoded, stored)


@pytest.mark.parametrize(
    "entry",
    [Entry(0x0112, 3, 2, b"\0\x06\0\x06"), Entry(0x0112, 4, 1, b"\0\0\0\x06")],
    ids=["two-shorts", "long"],
)
def test_an_orientation_of_an_unusual_integer_type_is_still_applied(photo: Image.Image, entry: Entry) -> None:
    stored = decode_image(encode(photo, "JPEG", quality=95), **LIMITS)
    decoded = decode_image(_jpeg_with_exif(photo, exif_block([entry])), **LIMITS)
    np.testing.assert_array_equal(
        decoded, np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    )


@pytest.mark.parametrize("big_endian", [True, False])
@pytest.mark.parametrize("name", sorted(WRONG_TYPED))
def test_a_wrong_typed_tag_beside_the_orientation_decodes(
    photo: Image.Image, name: str, big_endian: bool
) -> None:
    """ImageOps.exif_transpose raised struct.error/TypeError/AttributeError on these (a 500 before)."""
    block = exif_block([orientation(6, big_endian=big_endian), WRONG_TYPED[name]], big_endian=big_endian)
    decoded = decode_image(_jpeg_with_exif(photo, block), **LIMITS)
    stored = decode_image(encode(photo, "JPEG", quality=95), **LIMITS)
    upright = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    # The orientation is applied when the IFD is readable; an unreadable one means upright as stored.
    assert any(np.array_equal(decoded, candidate) for candidate in (upright, stored))


# ------------------------------------------------------------------------------------------- BMP RLE


def _rle_bmp(width: int, height: int, *, four_bit: bool, rows_of_data: int | None = None) -> bytes:
    """A palette BMP compressed with RLE8 or RLE4 (Pillow cannot write these): stripes of runs."""
    colours = 16 if four_bit else 256
    palette = b"".join(bytes((i * 16 % 256, i * 7 % 256, 255 - i % 256, 0)) for i in range(colours))
    data = bytearray()
    for row in range(height if rows_of_data is None else rows_of_data):
        left = width
        while left:
            run = min(left, 255)
            index = row % colours
            data += bytes((run, (index << 4 | index) if four_bit else index))
            left -= run
        data += b"\0\0"  # end of line
    data += b"\0\1"  # end of bitmap
    offset = 14 + 40 + len(palette)
    info = struct.pack(
        "<IiiHHIIiiII", 40, width, height, 1, 4 if four_bit else 8, 2 if four_bit else 1, len(data),
        2835, 2835, colours, 0,
    )  # fmt: skip
    return b"BM" + struct.pack("<IHHI", offset + len(data), 0, 0, offset) + info + palette + bytes(data)


@pytest.mark.parametrize("four_bit", [False, True], ids=["rle8", "rle4"])
@pytest.mark.parametrize(("width", "height"), [(1, 1), (16, 9), (255, 3), (640, 480), (6000, 6000)])
def test_rle_bmp_is_refused_from_its_header(width: int, height: int, four_bit: bool) -> None:
    data = _rle_bmp(width, height, four_bit=four_bit, rows_of_data=min(height, 4))
    assert Image.open(io.BytesIO(data)).info["compression"] == (2 if four_bit else 1)  # Pillow reads it
    with pytest.raises(ImageDecodeError) as error:
        open_image(data, **LIMITS)  # refused before any pixel is decoded
    assert error.value.code == "unsupported_format"
    assert "RLE" in error.value.detail


# ---------------------------------------------------------------- JPEG header claiming more rows


def _claim_rows(data: bytes, rows: int) -> bytes:
    edited = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        if (start := edited.find(marker)) >= 0:
            edited[start + 5 : start + 7] = struct.pack(">H", rows)
            return bytes(edited)
    raise AssertionError("no SOF marker")


@pytest.mark.parametrize("factor", [1.15, 1.5, 2, 4, 20, 200])
@pytest.mark.parametrize(
    "variant",
    [
        {"mode": "RGB", "progressive": False},
        {"mode": "RGB", "progressive": True},
        {"mode": "RGB", "progressive": False, "subsampling": 0},
        {"mode": "L", "progressive": False},
        {"mode": "CMYK", "progressive": False},
    ],
    ids=["baseline", "progressive", "444", "grey", "cmyk"],
)
def test_jpeg_claiming_more_rows_than_its_data_is_truncated(
    photo: Image.Image, variant: dict, factor: float
) -> None:
    options = {key: value for key, value in variant.items() if key != "mode"}
    data = encode(photo.convert(variant["mode"]), "JPEG", quality=90, **options)
    claimed = min(65_535, round(photo.height * factor))
    with pytest.raises(ImageDecodeError) as error:
        decode_image(_claim_rows(data, claimed), **LIMITS)
    assert error.value.code == "truncated"
    assert "truncated" in error.value.detail


@pytest.mark.parametrize("value", [127, 128])
@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(200, 200), (640, 480), (16, 300)])
def test_a_uniform_image_of_the_fill_value_is_not_taken_for_a_truncation(
    value: int, mode: str, size: tuple[int, int]
) -> None:
    # A blank card of libjpeg's fill grey is one value top to bottom: a valid (faceless) image.
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(buffer, "JPEG", quality=95)
    pixels = decode_image(buffer.getvalue(), max_bytes=10_000_000, max_pixels=10_000_000)
    assert pixels.shape == (size[1], size[0], 3)
    assert int(np.abs(pixels.astype(int) - value).max()) <= 1


def test_a_photo_with_a_thin_exact_grey_bottom_band_still_decodes(photo: Image.Image) -> None:
    pixels = np.asarray(photo).copy()
    pixels[-8:] = 128  # 8 of 222 rows: below the band that is taken for missing data
    decoded = decode_image(encode(Image.fromarray(pixels), "JPEG", quality=95), **LIMITS)
    assert decoded.shape == pixels.shape


# ------------------------------------------------------------------------------------------- draft


@pytest.mark.parametrize(
    ("longest", "min_side", "expected_longest"),
    [(199, 100, 199), (200, 100, 100), (399, 100, 200), (400, 100, 100), (800, 100, 100), (1600, 100, 200),
     (960, 320, 480), (1280, 320, 320), (959, 320, 480), (640, 0, 640)],
)  # fmt: skip
@pytest.mark.parametrize("portrait", [False, True])
def test_jpeg_draft_keeps_the_longest_side_at_least_min_side(
    photo: Image.Image, longest: int, min_side: int, expected_longest: int, portrait: bool
) -> None:
    shortest = round(longest * 0.7)
    size = (shortest, longest) if portrait else (longest, shortest)
    data = encode(photo.resize(size), "JPEG", quality=92)
    with open_image(data, **LIMITS, draft_min_side=min_side) as opened:
        expected_pixels = opened.decoded_pixels
        decoded = opened.decode()
    assert max(decoded.shape[:2]) == expected_longest
    assert decoded.shape[0] * decoded.shape[1] == expected_pixels
    assert min_side == 0 or max(decoded.shape[:2]) >= min_side
    full = Image.fromarray(decode_image(data, **LIMITS)).resize(
        (decoded.shape[1], decoded.shape[0]), Image.Resampling.BOX
    )
    assert (
        np.abs(decoded.astype(int) - np.asarray(full, dtype=int)).mean() < 10.0
    )  # the same picture (a different one differs by ~50)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "BMP", "TIFF"])
def test_draft_only_applies_to_jpeg(photo: Image.Image, image_format: str) -> None:
    data = encode(photo.resize((1000, 700)), image_format)
    assert decode_image(data, **LIMITS, draft_min_side=100).shape == (700, 1000, 3)


def test_the_pixel_limit_applies_to_the_declared_size_before_draft(photo: Image.Image) -> None:
    data = encode(photo.resize((2000, 1000)), "JPEG")
    with pytest.raises(ImageDecodeError) as error:
        decode_image(data, max_bytes=1 << 26, max_pixels=1_999_999, draft_min_side=100)
    assert error.value.code == "too_many_pixels"


def test_real_photos_are_never_taken_for_grey_filled_truncation(shared_faces) -> None:
    """The missing-rows check must not refuse real photos: a third of every shared set (~900 images)."""
    suffixes = {".jpg", ".jpeg", ".png", ".pgm", ".webp"}
    paths = sorted(p for p in shared_faces.rglob("*") if p.suffix.lower() in suffixes)
    assert len(paths) > 2_000
    for path in paths[::3]:
        image = decode_image(path.read_bytes(), max_bytes=16 << 20, max_pixels=40_000_000)
        assert image.shape[2] == 3, path
