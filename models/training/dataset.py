"""Identity-per-folder face data: scanning, the open-set identity split, and image tensors.

``root/<identity>/<image>``: every sub-folder with at least one image is one identity. Images may
have any size (they are resized to the backbone's input) and may be greyscale (replicated to three
channels, so RGB backbones and the service's RGB pipeline see the same kind of input).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from service.packs.conventions import ARCFACE_NORMALIZATION

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"})

# Pixel normalization of every face-train model: insightface's ArcFace one, RGB, (x − 127.5) / 127.5.
PIXEL_NORMALIZATION = ARCFACE_NORMALIZATION
PIXEL_MEAN = PIXEL_NORMALIZATION.mean[0]  # the same on every channel
PIXEL_STD = PIXEL_NORMALIZATION.std[0]


@dataclass(frozen=True)
class Identity:
    name: str
    images: tuple[Path, ...]


@dataclass(frozen=True)
class IdentitySplit:
    train: tuple[Identity, ...]  # class i of the head is train[i]
    holdout: tuple[Identity, ...]  # never seen in training; used for open-set verification


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders "s2" before "s10"."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text) if part)


def scan_identities(root: Path) -> list[Identity]:
    """Identities (sub-folders holding images) in natural name order; files at the root are ignored."""
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    identities = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        images = sorted(
            (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: natural_key(p.name),
        )
        if images:
            identities.append(Identity(folder.name, tuple(images)))
    if not identities:
        raise ValueError(f"no identity folders with images under {root} (expected root/<identity>/<image>)")
    return identities


def split_identities(
    identities: Sequence[Identity], *, holdout: int = 0, holdout_ids: Sequence[str] = (), seed: int = 0
) -> IdentitySplit:
    """Hold out ``holdout`` identities drawn with ``seed`` (or exactly ``holdout_ids``); train on the rest.

    Both parts keep the natural name order, so the class indices do not depend on the draw order.
    """
    names = [identity.name for identity in identities]
    if holdout_ids:
        missing = sorted(set(holdout_ids) - set(names))
        if missing:
            raise ValueError(f"held-out identities not found in the data: {missing}")
        held = set(holdout_ids)
    else:
        if holdout > len(identities):
            raise ValueError(f"cannot hold out {holdout} of {len(identities)} identities")
        order = np.random.default_rng(seed).permutation(len(identities))
        held = {names[i] for i in order[:holdout]}
    train = tuple(identity for identity in identities if identity.name not in held)
    holdout_part = tuple(identity for identity in identities if identity.name in held)
    if len(train) < 2:
        raise ValueError(f"need at least 2 training identities, have {len(train)}")
    return IdentitySplit(train=train, holdout=holdout_part)


def load_face_image(path: Path, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """An image file as H×W×3 RGB uint8 at ``size`` (width, height); greyscale is replicated."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
        if image.size != size:
            # Pillow's bilinear filter widens its support when shrinking, so it also antialiases.
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # class index (training) or identity index (held out)


def samples_of(identities: Sequence[Identity]) -> list[Sample]:
    return [Sample(path, label) for label, identity in enumerate(identities) for path in identity.images]


class FaceImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """(uint8 3×H×W tensor, label) per image; decoded on access, or all at once with ``preload``."""

    def __init__(self, samples: Sequence[Sample], size: tuple[int, int]) -> None:
        if not samples:
            raise ValueError("a dataset needs at least one image")
        self.samples = list(samples)
        self.size = size
        self._cache: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        if self._cache is not None:
            return self._cache[index], sample.label
        return _to_chw(load_face_image(sample.path, self.size)), sample.label

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([sample.label for sample in self.samples], dtype=torch.long)

    def preload(self) -> FaceImageDataset:
        """Decode every image once and keep them in memory (small sets: ORL is 400 × 12 KiB)."""
        self._cache = torch.stack([self[i][0] for i in range(len(self))])
        return self

    def all_images(self) -> torch.Tensor:
        """Every image as one (N, 3, H, W) uint8 tensor, in sample order."""
        if self._cache is not None:
            return self._cache
        return torch.stack([self[i][0] for i in range(len(self))])


def _to_chw(image: npt.NDArray[np.uint8]) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) → float (x − 127.5) / 127.5 on the images' device."""
    return (images.float() - PIXEL_MEAN) / PIXEL_STD
