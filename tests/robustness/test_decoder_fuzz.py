"""Fuzzing the image decoder (hypothesis): whatever the bytes, a clean ImageDecodeError or a valid image.

Inputs: random bytes, random bytes behind each accepted format's magic, every seed image (odd modes
included: 1-bit, L, LA, P, PA, RGBA, I;16, 48-bit RGB, CMYK) cut at random points or with random
bytes overwritten, and pixel-flood headers (a PNG IHDR of 100000×100000 and friends). The decoder
must answer with ``ImageDecodeError`` (which the API turns into a 4xx) or an H×W×3 uint8 array,
never another exception; flood headers must be refused from the header, without allocating the
image (checked with tracemalloc in-process and with the peak RSS of a fresh process under an
address-space limit). The API answers each kind with a problem+json 4xx.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.api.errors import PROBLEM_MEDIA_TYPE
from service.pipeline.decode import ImageDecodeError, decode_image
from tests.api.conftest import admin_headers, running_app
from tests.conftest import SHARED_FACES
from tests.pipeline.exif_blocks import (
    EXIF_IFD,
    GPS_IFD,
    KNOWN_TAGS,
    ORIENTATION,
    WRONG_TYPED,
    Entry,
    exif_block,
    orientation,
)
from tests.robustness.conftest import heavy_run

MAX_BYTES = 16 * 1024 * 1024
MAX_PIXELS = 40_000_000  # the service's defaults
EXAMPLES = 1500 if heavy_run() else 300
# Slow only so that `make test-heavy` (-m "slow or heavy") runs the scaled-up version too.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800 if heavy_run() else 300)]
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

MAGIC = {
    "JPEG": b"\xff\xd8\xff\xe0",
    "PNG": b"\x89PNG\r\n\x1a\n",
    "WEBP": b"RIFF\x00\x10\x00\x00WEBPVP8 ",
    "BMP": b"BM",
    "TIFF_LE": b"II*\x00",
    "TIFF_BE": b"MM\x00*",
    "PGM": b"P5\n",
    "PPM": b"P6\n",
}


# ------------------------------------------------------------------------------------------- inputs


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _gradient(width: int = 37, height: int = 23) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def seed_images() -> dict[str, tuple[bytes, tuple[int, int]]]:
    """Small valid images in every format and odd mode we accept: name -> (bytes, (width, height))."""
    rgb = _gradient()
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)  # mode I;16
    seeds = {
        "jpeg_rgb": encode(rgb, "JPEG", quality=90),
        "jpeg_grey": encode(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg_progressive": encode(rgb, "JPEG", progressive=True),
        "png_rgb": encode(rgb, "PNG"),
        "png_1bit": encode(rgb.convert("1"), "PNG"),
        "png_l": encode(rgb.convert("L"), "PNG"),
        "png_la": encode(rgb.convert("LA"), "PNG"),
        "png_p": encode(rgb.convert("P"), "PNG"),
        "png_p_trns": encode(rgb.convert("P"), "PNG", transparency=0),
        "png_rgba": encode(rgb.convert("RGBA"), "PNG"),
        "png_i16": encode(grey16, "PNG"),
        "png_rgb48": _rgb48_png(np.asarray(rgb, dtype=np.uint16) * 257),
        "webp_lossy": encode(rgb, "WEBP", quality=80),
        "webp_lossless_rgba": encode(rgb.convert("RGBA"), "WEBP", lossless=True),
        "bmp_rgb": encode(rgb, "BMP"),
        "bmp_1bit": encode(rgb.convert("1"), "BMP"),
        "bmp_p": encode(rgb.convert("P"), "BMP"),
        "pgm": encode(rgb.convert("L"), "PPM"),
        "pgm_16bit": encode(grey16, "PPM"),
        "ppm": encode(rgb, "PPM"),
        "pbm": encode(rgb.convert("1"), "PPM"),
        "tiff_rgb": encode(rgb, "TIFF"),
        "tiff_grey_lzw": encode(rgb.convert("L"), "TIFF", compression="tiff_lzw"),
        "tiff_grey16_deflate": encode(grey16, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_jpeg": encode(rgb, "TIFF", compression="jpeg"),
    }
    return {name: (data, rgb.size) for name, data in seeds.items()}


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _rgb48_png(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(height))
    return (
        MAGIC["PNG"]
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_flood(width: int, height: int, rows: int = 1) -> bytes:
    """A valid PNG header declaring ``width × height`` RGB, with ``rows`` rows of data (at most 4096 px)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = zlib.compress(bytes(rows * (1 + 3 * min(width, 4096))))
    return MAGIC["PNG"] + header + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def jpeg_flood(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 frame header is rewritten to ``width × height``."""
    data = bytearray(encode(_gradient(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_flood(width: int, height: int) -> bytes:
    """A BMP header (BITMAPINFOHEADER, 24 bits) declaring ``width × height`` and no pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def webp_flood(width: int, height: int) -> bytes:
    """A VP8X (extended) WebP header declaring a ``width × height`` canvas (max 16384²)."""
    vp8x = struct.pack("<I", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


FLOODS = {
    "png_100000x100000": png_flood(100_000, 100_000),
    "png_2^31-1_square": png_flood(2**31 - 1, 2**31 - 1),
    "png_1x2^31-1": png_flood(1, 2**31 - 1),
    "jpeg_65500x65500": jpeg_flood(65_500, 65_500),
    "bmp_100000x100000": bmp_flood(100_000, 100_000),
    "bmp_top_down_huge": bmp_flood(100_000, -100_000),
    "webp_16384x16384": webp_flood(16_384, 16_384),
}
SEEDS = seed_images()
DECODE_ERROR_CODES = {
    "empty",
    "too_large",
    "too_many_pixels",
    "not_an_image",
    "unsupported_format",
    "truncated",
}


def decodes_cleanly(data: bytes, *, size: tuple[int, int] | None = None) -> np.ndarray | None:
    """The property every input must have: ImageDecodeError, or an H×W×3 uint8 image."""
    try:
        image = decode_image(data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    except ImageDecodeError as error:
        assert error.code in DECODE_ERROR_CODES  # noqa: PT017 (the property under test, not an expectation)
        return None
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert image.shape[2] == 3
    assert image.flags["C_CONTIGUOUS"]
    assert image.shape[0] * image.shape[1] <= MAX_PIXELS
    if size is not None:
        assert image.shape[:2] in {(size[1], size[0]), (size[0], size[1])}
    return image


# ------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes(name: str) -> None:
    data, size = SEEDS[name]
    assert decodes_cleanly(data, size=size) is not None


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    decodes_cleanly(data)


@FUZZ
@given(image_format=st.sampled_from(sorted(MAGIC)), tail=st.binary(max_size=2048))
def test_random_bytes_behind_a_format_signature(image_format: str, tail: bytes) -> None:
    decodes_cleanly(MAGIC[image_format] + tail)


@FUZZ
@given(name=st.sampled_from(sorted(SEEDS)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_images(name: str, cut: float) -> None:
    data, size = SEEDS[name]
    decodes_cleanly(data[: int(len(data) * cut)], size=size)


@FUZZ
@given(
    name=st.sampled_from(sorted(SEEDS)),
    edits=st.lists(
        st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8
    ),
)
def test_corrupted_images(name: str, edits: list[tuple[float, int]]) -> None:
    data = bytearray(SEEDS[name][0])
    for where, value in edits:
        data[int(where * len(data))] = value
    decodes_cleanly(bytes(data))


@FUZZ
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_any_png_header_size(width: int, height: int) -> None:
    header_only = png_flood(width, height, rows=0)
    with pytest.raises(ImageDecodeError) as raised:
        decode_image(header_only, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    # Over the limit: refused from the header; under it: the pixel data is missing.
    expected = "too_many_pixels" if width * height > MAX_PIXELS else "truncated"
    assert raised.value.code == expected


@pytest.mark.parametrize("name", sorted(FLOODS))
def test_pixel_flood_headers_are_refused_without_allocating(name: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ImageDecodeError) as raised:
            decode_image(FLOODS[name], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.code in {"too_many_pixels", "truncated"}
    assert peak < 1 << 20, f"{name}: {peak} bytes traced while refusing it"


FLOOD_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from service.pipeline.decode import ImageDecodeError, decode_image

    def peak_rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    decode_image(Path(sys.argv[1]).read_bytes(), max_bytes=1 << 24, max_pixels=40_000_000)  # warm up
    before = peak_rss()
    # Any allocation near the declared image sizes (GBs) fails under this cap instead of swapping.
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + (512 << 20), resource.RLIM_INFINITY))
    codes = {}
    for path in sys.argv[2:]:
        try:
            decode_image(Path(path).read_bytes(), max_bytes=1 << 24, max_pixels=40_000_000)
            codes[Path(path).name] = "decoded"
        except ImageDecodeError as error:
            codes[Path(path).name] = error.code
    print(json.dumps({"growth": peak_rss() - before, "codes": codes}))
    """
)


def test_floods_keep_a_fresh_process_small(tmp_path: Path) -> None:
    """Peak RSS of a new process decoding every flood header (plus a real, highly compressible
    bomb: 20000×20000 zero pixels, ~20 KB of PNG) under a 512 MiB address-space cap."""
    bomb = Image.new("L", (20_000, 20_000))
    bombs = {**FLOODS, "png_bomb_20000x20000": encode(bomb, "PNG", optimize=True)}
    del bomb
    paths = []
    for name, data in bombs.items():
        path = tmp_path / name
        path.write_bytes(data)
        paths.append(str(path))
    warm = tmp_path / "warm.png"
    warm.write_bytes(SEEDS["png_rgb"][0])
    result = subprocess.run(
        [sys.executable, "-c", FLOOD_CHILD, str(warm), *paths],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert set(report["codes"].values()) <= {"too_many_pixels", "truncated"}, report["codes"]
    assert report["codes"]["png_bomb_20000x20000"] == "too_many_pixels"
    assert report["growth"] < 32 << 20, f"peak RSS grew {report['growth'] / 2**20:.1f} MiB"


# ------------------------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, default_pack_dir: Path):
    with running_app(tmp_path_factory.mktemp("decoder-api"), default_pack_dir) as test_client:
        yield test_client


def _assert_problem_4xx(response, allowed: set[int]) -> None:
    assert response.status_code in allowed, response.text
    assert response.headers["content-type"].startswith(PROBLEM_MEDIA_TYPE)
    body = response.json()
    assert body["status"] == response.status_code
    assert body["errors"][0]["field"] == "image"


@pytest.mark.parametrize("name", sorted(FLOODS))
def test_api_refuses_floods_with_413_or_422(client, name: str) -> None:
    response = client.post(
        "/v1/detect", headers=admin_headers(), files={"image": ("flood", FLOODS[name], "image/png")}
    )
    _assert_problem_4xx(response, {413, 422})


@settings(max_examples=EXAMPLES // 3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=1, max_size=2048))
def test_api_answers_random_bytes_with_a_4xx_problem(client, data: bytes) -> None:
    response = client.post("/v1/detect", headers=admin_headers(), files={"image": ("x", data, "image/jpeg")})
    _assert_problem_4xx(response, {413, 415, 422})


@settings(max_examples=EXAMPLES // 3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(sorted(SEEDS)), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_api_answers_truncated_images_with_a_4xx_problem(client, name: str, cut: float) -> None:
    data, (width, height) = SEEDS[name]
    response = client.post(
        "/v1/detect",
        headers=admin_headers(),
        files={"image": ("x", data[: int(len(data) * cut)], "image/png")},
    )
    if response.status_code == 200:
        # Only a cut into trailing bytes after the last pixel (PNG's IEND, BMP's row padding) decodes.
        assert response.json()["image"] == {"width": width, "height": height}
        assert cut > 0.8
        return
    _assert_problem_4xx(response, {415, 422})


# ------------------------------------------------------------------------------- EXIF structure


def _real_jpegs() -> list[bytes]:
    """Small real photos (dlib_johns, 150×150) as their original bytes; empty without the shared set."""
    return [path.read_bytes() for path in sorted(SHARED_FACES.glob("dlib_johns/John_S*/*.jpg"))[:40:8]]


REAL_JPEGS = _real_jpegs()
needs_real_jpegs = pytest.mark.skipif(not REAL_JPEGS, reason=f"shared face data not found at {SHARED_FACES}")


def with_app1(jpeg: bytes, block: bytes) -> bytes:
    """The JPEG's own bytes with an APP1 (EXIF) segment spliced in right after SOI."""
    block = block[:65_533]
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block + jpeg[2:]


_ANY_ENTRY = st.builds(
    Entry,
    tag=st.one_of(st.sampled_from((ORIENTATION, EXIF_IFD, GPS_IFD)), st.integers(0, 0xFFFF)),
    field_type=st.integers(0, 20),  # every TIFF type, and invalid ones
    count=st.one_of(st.integers(0, 16), st.integers(0, 2**32 - 1)),
    value=st.binary(max_size=40),  # > 4 bytes: stored after the IFD behind an offset
)
# Tags Pillow knows a type for, with any other type: writing these back is what broke exif_transpose.
_KNOWN_TAG_ANY_TYPE = st.builds(
    Entry,
    tag=st.sampled_from(KNOWN_TAGS),
    field_type=st.integers(0, 20),
    count=st.integers(0, 16),
    value=st.binary(max_size=40),
)
_ENTRIES = st.one_of(st.sampled_from(list(WRONG_TYPED.values())), _KNOWN_TAG_ANY_TYPE, _ANY_ENTRY)


@st.composite
def exif_structures(draw: st.DrawFn) -> bytes:
    """EXIF blocks with any tags, types, counts, offsets and orientation values, then byte edits."""
    big_endian = draw(st.booleans())
    entries = draw(st.lists(_ENTRIES, max_size=12))
    # An orientation tag (valid ones are 1..8) makes Pillow rewrite the rest when it transposes.
    value = draw(st.one_of(st.none(), st.integers(2, 8), st.integers(0, 0xFFFF)))
    if value is not None:
        entries.insert(draw(st.integers(0, len(entries))), orientation(value, big_endian=big_endian))
    # A broken next-IFD offset or byte edits can make Pillow drop the whole block: a quarter each, so
    # that most examples reach the orientation with their odd tags intact.
    next_ifd = 0
    if draw(st.integers(0, 3)) == 0:
        next_ifd = draw(st.one_of(st.integers(0, 64), st.integers(0, 2**32 - 1)))
    block = bytearray(exif_block(entries, big_endian=big_endian, next_ifd=next_ifd))
    if draw(st.integers(0, 3)) == 0:
        edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=4)
        for where, byte in draw(edits):
            block[int(where * len(block))] = byte
    return bytes(block)


@needs_real_jpegs
@FUZZ
@given(photo=st.sampled_from(range(len(REAL_JPEGS) or 1)), block=exif_structures())
def test_any_exif_structure_on_a_real_jpeg_decodes_or_is_a_decode_error(photo: int, block: bytes) -> None:
    original = decode_image(REAL_JPEGS[photo], max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    decoded = decodes_cleanly(with_app1(REAL_JPEGS[photo], block))
    # EXIF never touches the pixels: the image decodes, at most turned by an orientation.
    assert decoded is not None
    assert decoded.shape in {original.shape, (original.shape[1], original.shape[0], 3)}


@needs_real_jpegs
@settings(max_examples=EXAMPLES // 3, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(photo=st.sampled_from(range(len(REAL_JPEGS) or 1)), block=exif_structures())
def test_api_answers_any_exif_structure_with_200_or_a_4xx_problem(client, photo: int, block: bytes) -> None:
    data = with_app1(REAL_JPEGS[photo], block)
    response = client.post(
        "/v1/detect", headers=admin_headers(), files={"image": ("x.jpg", data, "image/jpeg")}
    )
    if response.status_code != 200:
        _assert_problem_4xx(response, {413, 415, 422})


def _claiming_more_rows(jpeg: bytes, factor: int) -> bytes:
    edited = bytearray(jpeg)
    sof = next(i for i in range(len(edited) - 1) if edited[i] == 0xFF and edited[i + 1] in (0xC0, 0xC1, 0xC2))
    (rows,) = struct.unpack(">H", edited[sof + 5 : sof + 7])
    edited[sof + 5 : sof + 7] = struct.pack(">H", min(65_535, rows * factor))
    return bytes(edited)


def _rle8_bmp(width: int, height: int) -> bytes:
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    rows = b"".join(bytes((width, row % 256)) + b"\0\0" for row in range(height)) + b"\0\1"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def test_bulk_enrollment_with_bad_exif_images_enrolls_every_image(client, shared_faces: Path) -> None:
    """Wrong-typed tags beside an orientation tag (the old 500s), each in one upload of one request."""
    photos = sorted((shared_faces / "dlib_johns" / "John_Savage").glob("*.jpg"))
    good = [("images", (path.name, path.read_bytes(), "image/jpeg")) for path in photos[:3]]
    bad_exif = [
        (
            "images",
            (
                f"{name}.jpg",
                with_app1(photos[3 + i % 8].read_bytes(), exif_block([orientation(1), entry])),
                "image/jpeg",
            ),
        )
        for i, (name, entry) in enumerate(sorted(WRONG_TYPED.items()))
    ]
    refused = [
        ("images", ("rows.jpg", _claiming_more_rows(photos[0].read_bytes(), 4), "image/jpeg")),
        ("images", ("rle.bmp", _rle8_bmp(150, 150), "image/bmp")),
        ("images", ("cut.jpg", photos[1].read_bytes()[:2000], "image/jpeg")),
    ]
    subject = client.post("/v1/subjects", json={"name": "exif"}, headers=admin_headers()).json()["id"]
    response = client.post(
        f"/v1/subjects/{subject}/faces", files=good + bad_exif + refused, headers=admin_headers()
    )
    assert response.status_code == 201, response.text
    results = response.json()["results"]
    assert [item["accepted"] for item in results] == [True] * (len(good) + len(bad_exif)) + [False] * 3
    reasons = [item["rejection"] for item in results[-3:]]
    assert [reason["code"] for reason in reasons] == ["invalid_image"] * 3
    assert "truncated" in reasons[0]["detail"]
    assert "RLE" in reasons[1]["detail"]
    assert "truncated" in reasons[2]["detail"]
    stored = client.get(f"/v1/subjects/{subject}", headers=admin_headers()).json()
    assert stored["face_count"] == len(good) + len(bad_exif)


def test_orl_faces_are_accepted_as_pgm_grey_png_and_grey_tiff(client, shared_faces: Path) -> None:
    """ORL ships greyscale PGM: the API takes it as it is, and as greyscale PNG or TIFF."""
    paths = sorted((shared_faces / "orl_att_faces" / "s1").glob("*.pgm"))[:3]
    with Image.open(paths[0]) as grey:
        encodings = {
            "pgm": paths[0].read_bytes(),
            "png": encode(grey, "PNG"),
            "tiff": encode(grey, "TIFF", compression="tiff_lzw"),
        }
        size = {"width": grey.width, "height": grey.height}
    boxes = {}
    for name, data in encodings.items():
        response = client.post(
            "/v1/detect", headers=admin_headers(), files={"image": (f"s1.{name}", data, "image/x")}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image"] == size
        assert len(body["faces"]) == 1, name
        boxes[name] = body["faces"][0]["box"]
    assert boxes["pgm"] == boxes["png"] == boxes["tiff"]  # the same pixels, whatever the container
    subject = client.post("/v1/subjects", json={"name": "orl s1"}, headers=admin_headers()).json()["id"]
    files = [("images", (path.name, path.read_bytes(), "image/x-portable-graymap")) for path in paths]
    enrolled = client.post(f"/v1/subjects/{subject}/faces", files=files, headers=admin_headers())
    assert enrolled.status_code == 201, enrolled.text
    assert enrolled.json()["accepted"] == len(paths), enrolled.text  # PGM uploads enroll as they are
