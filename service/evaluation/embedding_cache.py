"""On-disk cache of per-image evaluation results, keyed by (pack, file sha256, options).

The pack part of the key is its id *and* the sha256 of its ``manifest.json``: editing a manifest
(another template, normalization, threshold) never reads back entries computed under the old one.

A re-run of ``face-eval`` on the same images with the same pack and options reads every embedding
back instead of running the models. Entries are small ``.npz`` files written atomically (temp file
and rename), so concurrent runs and interrupted runs never leave a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from service.atomic_files import write_bytes_atomic
from service.pipeline.types import FloatArray

if TYPE_CHECKING:
    from service.packs.loader import LoadedPack

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels

# Bump when what an entry means changes (face choice, stored fields): old entries are then ignored.
# 2: the face is chosen by a FacePolicy; entries keep its box and the image's face count.
CACHE_FORMAT_VERSION = 2


@dataclass(frozen=True)
class FileEmbedding:
    """What the pipeline made of one image file."""

    embedding: FloatArray | None  # (D,) unit norm, of the chosen face; None when no face was found
    det_score: float | None  # detector score of the embedded face
    seconds: float  # decode + detect + align + embed, measured when the entry was computed
    box: Box | None = None  # the embedded face's box; None without a face
    faces_in_image: int = 0  # faces the detector found (the chosen one among them)


def pack_fingerprint(pack: LoadedPack) -> str:
    """``<pack id>@<sha256 of its manifest.json>``: any edit of the manifest gives new cache keys.

    The file, not the manifest as loaded: a ``calibration.json`` beside it (``face-eval calibrate
    --write``) only adds named thresholds, which change no embedding, so writing one keeps the cache.
    """
    from service.packs.files import sha256_file
    from service.packs.manifest import MANIFEST_FILE

    return f"{pack.manifest.id}@{sha256_file(pack.dir / MANIFEST_FILE)}"


def cache_key(pack_key: str, content_sha256: str, options: Mapping[str, object]) -> str:
    """A stable key: the same pack, bytes and options always give the same key, anything else not.

    ``pack_key`` names the pack's exact state (``pack_fingerprint``).
    """
    material = json.dumps(
        {"version": CACHE_FORMAT_VERSION, "pack": pack_key, "file": content_sha256, "options": options},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """``FileEmbedding`` entries under ``root/<key[:2]>/<key>.npz``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> FileEmbedding | None:
        """The entry for ``key``, or None when absent or unreadable (it is then recomputed)."""
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                embedding = np.asarray(data["embedding"], dtype=np.float32)
                det_score = float(data["det_score"])
                box = [float(v) for v in np.asarray(data["box"], dtype=np.float64)]
                return FileEmbedding(
                    embedding=embedding if embedding.size else None,
                    det_score=None if np.isnan(det_score) else det_score,
                    seconds=float(data["seconds"]),
                    box=(box[0], box[1], box[2], box[3]) if len(box) == 4 else None,
                    faces_in_image=int(data["faces_in_image"]),
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return None

    def put(self, key: str, entry: FileEmbedding) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(
            buffer,
            embedding=np.zeros(0, np.float32) if entry.embedding is None else entry.embedding,
            det_score=np.float64(np.nan if entry.det_score is None else entry.det_score),
            seconds=np.float64(entry.seconds),
            box=np.zeros(0, np.float64) if entry.box is None else np.asarray(entry.box, np.float64),
            faces_in_image=np.int64(entry.faces_in_image),
        )
        # A cache entry can always be recomputed: atomic, but not worth an fsync.
        write_bytes_atomic(path, buffer.getvalue(), durable=False)
