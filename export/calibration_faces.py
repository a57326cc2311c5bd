"""Faces for int8 calibration (chips for SFace, photos for RetinaFace) from public-domain portraits in wheels.

Static int8 quantization needs activation ranges, so it needs face chips, and the pack build may only
use what the package index gives. Two wheels carry a public-domain portrait (sha256-pinned; the bytes
are what counts, so any installed release with the same file serves, else the pinned wheel is
downloaded, never installed): scikit-image's ``astronaut.png`` (Eileen Collins, NASA; "no known
copyright restrictions, released into the public domain") and matplotlib's ``grace_hopper.jpg``
(Commodore Grace M. Hopper, an official U.S. Navy photograph: a work of the U.S. federal government).

Two people are few, so each chip is a fresh draw of what varies in real photos: pose and landmark
error (rotation, scale, shift of the alignment), resolution (down-scaling), JPEG quality, light
(brightness, contrast, saturation, down to grey), blur, sensor noise, mirror. The landmarks are pinned
(the default detector's, measured once) so the chips do not depend on a detector's floating point.
Measured with these chips against 100 celeba_wild ones, the quantized SFace's cosine to fp32 on 327
held-out celeba_wild chips was 0.9960 vs 0.9966 mean (docs/benchmarks.md, "Tuning").
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageEnhance, ImageFilter

from export.wheel_files import PackagedFile, packaged_file
from service.pipeline.align import align_to_template
from service.pipeline.types import FloatArray, ImageArray


@dataclass(frozen=True)
class Portrait:
    """One public-domain photo with one face and its 5 landmarks (eyes, nose, mouth corners; pixels)."""

    file: PackagedFile
    landmarks: tuple[tuple[float, float], ...]
    credit: str


PORTRAITS: Final = (
    Portrait(
        file=PackagedFile(
            package="scikit-image",
            version="0.26.0",
            path="skimage/data/astronaut.png",
            sha256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        ),
        landmarks=((202.9, 101.3), (247.1, 103.3), (223.3, 129.8), (200.6, 139.0), (245.5, 140.8)),
        credit="Eileen Collins, NASA (public domain), scikit-image's astronaut.png",
    ),
    Portrait(
        file=PackagedFile(
            package="matplotlib",
            version="3.11.2",
            path="matplotlib/mpl-data/sample_data/grace_hopper.jpg",
            sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
        ),
        landmarks=((223.4, 188.9), (305.7, 187.8), (266.3, 247.9), (235.8, 278.4), (298.7, 277.0)),
        credit="Grace Hopper, U.S. Navy (public domain), matplotlib's grace_hopper.jpg",
    ),
)
CHIP_COUNT: Final = 128
PHOTO_COUNT: Final = 48
PHOTO_SIZE: Final = (640, 480)
SEED: Final = 0


def calibration_chips(
    template: FloatArray, size: tuple[int, int], wheels_dir: Path, *, count: int = CHIP_COUNT
) -> list[ImageArray]:
    """``count`` RGB uint8 chips of ``size`` on ``template``, the portraits taking turns (seeded)."""
    photos = _portrait_images(wheels_dir)
    rng = np.random.default_rng(SEED)
    return [_augmented_chip(*photos[i % len(photos)], template, size, rng) for i in range(count)]


def calibration_photos(wheels_dir: Path, *, count: int = PHOTO_COUNT) -> list[ImageArray]:
    """``count`` RGB photos, taking turns: a 640×480 one with a portrait at 30–120 % size, relit, anywhere
    on a plain background; and a close-up, the face filling the photo's height (an ID crop).

    Every photo is 640×480 (ONNX Runtime's calibrator stacks the runs' activations, so one shape)."""
    photos = _portrait_images(wheels_dir)
    rng = np.random.default_rng(SEED)
    made = []
    for i in range(count):
        photo, portrait = photos[i % len(photos)]
        made.append(_composed(photo, rng) if i % 4 < 2 else _close_up(photo, portrait, rng))
    return made


def _portrait_images(wheels_dir: Path) -> list[tuple[Image.Image, Portrait]]:
    return [(Image.open(io.BytesIO(packaged_file(p.file, wheels_dir))).convert("RGB"), p) for p in PORTRAITS]


def _composed(photo: Image.Image, rng: np.random.Generator) -> ImageArray:
    scale = rng.uniform(0.3, 1.2)
    portrait = _relit(photo.resize((int(photo.width * scale), int(photo.height * scale))), rng)
    background = tuple(int(v) for v in rng.integers(0, 256, 3))
    canvas = Image.new("RGB", PHOTO_SIZE, background)
    x = int(rng.integers(0, max(1, PHOTO_SIZE[0] - portrait.width)))
    y = int(rng.integers(0, max(1, PHOTO_SIZE[1] - portrait.height)))
    canvas.paste(portrait, (x, y))
    return np.asarray(canvas)


def _close_up(photo: Image.Image, portrait: Portrait, rng: np.random.Generator) -> ImageArray:
    landmarks = np.asarray(portrait.landmarks, dtype=np.float64)
    centre = landmarks.mean(axis=0) + rng.normal(0.0, 4.0, 2)
    half = float(np.linalg.norm(landmarks[1] - landmarks[0])) * rng.uniform(1.1, 1.8)
    box = (centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half)
    side = PHOTO_SIZE[1]
    crop = photo.crop((round(box[0]), round(box[1]), round(box[2]), round(box[3])))
    close_up = _relit(crop.resize((side, side), Image.Resampling.BILINEAR), rng)
    canvas = Image.new("RGB", PHOTO_SIZE, tuple(int(v) for v in rng.integers(0, 256, 3)))
    canvas.paste(close_up, (int(rng.integers(0, PHOTO_SIZE[0] - side + 1)), 0))
    return np.asarray(canvas)


def _augmented_chip(
    photo: Image.Image,
    portrait: Portrait,
    template: FloatArray,
    size: tuple[int, int],
    rng: np.random.Generator,
) -> ImageArray:
    image = _degraded(_relit(photo, rng), rng)
    scale = image.width / photo.width
    landmarks = _jittered(np.asarray(portrait.landmarks, dtype=np.float64) * scale, rng)
    chip = align_to_template(np.asarray(image), landmarks.astype(np.float32), template, size)
    noisy = chip.astype(np.float32) + rng.normal(0.0, rng.uniform(0.0, 6.0), chip.shape)
    out = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out[:, ::-1]) if rng.random() < 0.5 else out


def _relit(photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(photo).enhance(rng.uniform(0.5, 1.5))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.5, 1.5))
    return ImageEnhance.Color(image).enhance(rng.uniform(0.0, 1.6))


def _degraded(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Blurred (sometimes), down-scaled to 25–100 %, JPEG-compressed at quality 30–94."""
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    scale = rng.uniform(0.25, 1.0)
    image = image.resize(
        (max(64, int(image.width * scale)), max(64, int(image.height * scale))), Image.Resampling.BILINEAR
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(rng.integers(30, 95)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _jittered(landmarks: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Rotated ±20°, scaled ±15 %, shifted and perturbed by a few % of the eye distance."""
    centre = landmarks.mean(axis=0)
    angle = np.deg2rad(rng.uniform(-20.0, 20.0))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    eye_distance = float(np.linalg.norm(landmarks[1] - landmarks[0]))
    moved = (landmarks - centre) @ (rotation * rng.uniform(0.85, 1.15)).T + centre
    jittered: npt.NDArray[np.float64] = (
        moved + rng.normal(0.0, 0.05 * eye_distance, 2) + rng.normal(0.0, 0.02 * eye_distance, (5, 2))
    )
    return jittered
