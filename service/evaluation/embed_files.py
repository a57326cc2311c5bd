"""Run image files through the service's FacePipeline (or read them from the cache).

One face per image: the largest one the detector finds, as the service does for ``/v1/verify``.
An image without a face is recorded as such, never dropped silently; what happens to it is the
caller's policy (see ``verification.NoFacePolicy``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from service.evaluation.embedding_cache import EmbeddingCache, FileEmbedding, cache_key, file_sha256
from service.evaluation.image_files import read_image
from service.pipeline.types import ImageArray

if TYPE_CHECKING:
    from service.pipeline.face_pipeline import FacePipeline
    from service.settings import Settings

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class EmbedOptions:
    """Everything besides the pack and the file bytes that changes an embedding (the cache key)."""

    det_input_size: int
    det_score_threshold: float | None  # None: the pack's recommendation
    det_nms_threshold: float | None
    min_face_size: int
    aligned: bool = False  # the images already are the pack's chips: no detection, resize only

    @classmethod
    def from_settings(cls, settings: Settings, *, aligned: bool = False) -> EmbedOptions:
        return cls(
            det_input_size=settings.det_input_size,
            det_score_threshold=settings.det_score_threshold,
            det_nms_threshold=settings.det_nms_threshold,
            min_face_size=settings.min_face_size,
            aligned=aligned,
        )


@dataclass
class EmbeddingRun:
    results: dict[Path, FileEmbedding] = field(default_factory=dict)
    cache_hits: int = 0
    computed: int = 0

    @property
    def no_face(self) -> list[Path]:
        return [path for path, result in self.results.items() if result.embedding is None]

    @property
    def seconds_per_image(self) -> float | None:
        """Mean pipeline time per image (cached entries keep the time measured when computed)."""
        if not self.results:
            return None
        return float(np.mean([result.seconds for result in self.results.values()]))


class FileEmbedder:
    """Embeds files with a pack's pipeline, through an optional cache.

    ``pipeline`` is a FacePipeline or a function that makes one: it is then called only on the first
    cache miss, so a fully cached re-run never loads the models.
    """

    def __init__(
        self,
        pack_id: str,
        pipeline: FacePipeline | Callable[[], FacePipeline],
        options: EmbedOptions,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self._pack_id = pack_id
        self._pipeline_or_factory = pipeline
        self._options = options
        self._cache = cache
        self._key_options = asdict(options)

    @property
    def _pipeline(self) -> FacePipeline:
        if callable(self._pipeline_or_factory):
            self._pipeline_or_factory = self._pipeline_or_factory()
        if self._pipeline_or_factory.pack_id != self._pack_id:
            raise ValueError(
                f"the pipeline runs pack {self._pipeline_or_factory.pack_id!r}, not {self._pack_id!r}"
            )
        return self._pipeline_or_factory

    def embed_files(self, paths: Sequence[Path], progress: ProgressCallback | None = None) -> EmbeddingRun:
        run = EmbeddingRun()
        unique = list(dict.fromkeys(paths))
        for done, path in enumerate(unique, start=1):
            key = cache_key(self._pack_id, file_sha256(path), self._key_options) if self._cache else ""
            cached = self._cache.get(key) if self._cache else None
            if cached is not None:
                run.results[path] = cached
                run.cache_hits += 1
            else:
                result = self.embed_file(path)
                run.results[path] = result
                run.computed += 1
                if self._cache:
                    self._cache.put(key, result)
            if progress is not None:
                progress(done, len(unique))
        return run

    def embed_file(self, path: Path) -> FileEmbedding:
        start = time.perf_counter()
        image = read_image(path)
        if self._options.aligned:
            embedding = self._pipeline.embed_chips_sync([self._as_chip(image)])[0]
            return FileEmbedding(embedding, None, time.perf_counter() - start)
        faces = self._pipeline.analyze_sync(image, max_faces=1)
        seconds = time.perf_counter() - start
        if not faces:
            return FileEmbedding(None, None, seconds)
        return FileEmbedding(faces[0].embedding, faces[0].face.score, seconds)

    def _as_chip(self, image: ImageArray) -> ImageArray:
        width, height = self._pipeline.chip_size
        if image.shape[:2] == (height, width):
            return image
        shrinking = image.shape[1] > width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=interpolation))


def stderr_progress(label: str, every: int = 50) -> ProgressCallback:
    """A progress callback that writes ``label: done/total`` to stderr now and then."""

    def report(done: int, total: int) -> None:
        if done == total or done % every == 0:
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report
