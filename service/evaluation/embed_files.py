"""Run image files through the service's FacePipeline (or read them from the cache).

One face per image: the one the ``FacePolicy`` chooses, as the service does for ``/v1/verify``
(``FACE_FACE_POLICY``, or ``face-eval --face``). An image without a face is recorded as such, never
dropped silently; what happens to it is the caller's policy (see ``verification.NoFacePolicy``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from service.evaluation.embedding_cache import (
    Box,
    EmbeddingCache,
    FileEmbedding,
    cache_key,
    pack_fingerprint,
)
from service.evaluation.image_files import read_image
from service.packs.files import sha256_file
from service.pipeline.types import FloatArray, ImageArray
from service.settings import FacePolicy

if TYPE_CHECKING:
    from service.packs.loader import LoadedPack
    from service.packs.manifest import PackManifest
    from service.pipeline.face_pipeline import FacePipeline
    from service.settings import Settings


@dataclass(frozen=True)
class EmbedProgress:
    """Where an embedding run stands, for progress reports."""

    done: int
    total: int
    cache_hits: int
    computed: int
    elapsed_s: float

    @property
    def rate(self) -> float | None:
        """Images per second so far (cache hits included), None before any time has passed."""
        return self.done / self.elapsed_s if self.elapsed_s > 0 and self.done else None

    @property
    def seconds_left(self) -> float | None:
        rate = self.rate
        return None if rate is None else (self.total - self.done) / rate


ProgressCallback = Callable[[EmbedProgress], None]


@dataclass(frozen=True)
class EmbedOptions:
    """Everything besides the pack and the file bytes that changes an embedding (the cache key)."""

    det_input_size: int
    det_score_threshold: float | None  # None: the pack's recommendation
    det_nms_threshold: float | None
    min_face_size: int
    max_faces: int  # the detector keeps this many largest faces: the face choice sees only those
    face_policy: FacePolicy = FacePolicy.CENTRE
    flip: bool | None = None  # flip test-time augmentation; None: as the pack's manifest says
    aligned: bool = False  # the images already are the pack's chips: no detection, resize only

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        aligned: bool = False,
        face_policy: FacePolicy | None = None,
        flip: bool | None = None,
    ) -> EmbedOptions:
        return cls(
            det_input_size=settings.det_input_size,
            det_score_threshold=settings.det_score_threshold,
            det_nms_threshold=settings.det_nms_threshold,
            min_face_size=settings.min_face_size,
            max_faces=settings.max_faces,
            face_policy=settings.face_policy if face_policy is None else face_policy,
            flip=flip,
            aligned=aligned,
        )

    def key_options(self, manifest: PackManifest) -> dict[str, Any]:
        """The options as they enter the cache key, flip resolved against the manifest."""
        options = asdict(self)
        options["face_policy"] = self.face_policy.value
        options["flip"] = manifest.embedder.flip_augmentation if self.flip is None else self.flip
        return options


def build_pipeline(pack: LoadedPack, settings: Settings, *, flip: bool | None = None) -> FacePipeline:
    """``FacePipeline.from_pack``, with flip TTA forced on or off (None: as the manifest says)."""
    from service.pipeline.face_pipeline import FacePipeline  # onnxruntime: only on a cache miss

    return FacePipeline.from_pack(pack, settings, flip=flip)


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
        pack: LoadedPack,
        pipeline: FacePipeline | Callable[[], FacePipeline],
        options: EmbedOptions,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self._pack_id = pack.manifest.id
        self._pack_key = pack_fingerprint(pack)
        self._pipeline_or_factory = pipeline
        self._options = options
        self._cache = cache
        self._key_options = options.key_options(pack.manifest)

    @property
    def options(self) -> EmbedOptions:
        return self._options

    @property
    def _pipeline(self) -> FacePipeline:
        if callable(self._pipeline_or_factory):
            self._pipeline_or_factory = self._pipeline_or_factory()
        if self._pipeline_or_factory.pack_id != self._pack_id:
            raise ValueError(
                f"the pipeline runs pack {self._pipeline_or_factory.pack_id!r}, not {self._pack_id!r}"
            )
        return self._pipeline_or_factory

    def key(self, path: Path) -> str:
        """The cache key of ``path`` under this pack and these options."""
        return cache_key(self._pack_key, sha256_file(path), self._key_options)

    def embed_files(self, paths: Sequence[Path], progress: ProgressCallback | None = None) -> EmbeddingRun:
        run = EmbeddingRun()
        unique = list(dict.fromkeys(paths))
        start = time.perf_counter()
        for done, path in enumerate(unique, start=1):
            key = self.key(path) if self._cache else ""
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
                elapsed = time.perf_counter() - start
                progress(EmbedProgress(done, len(unique), run.cache_hits, run.computed, elapsed))
        return run

    def embed_file(self, path: Path) -> FileEmbedding:
        start = time.perf_counter()
        image = read_image(path)
        if self._options.aligned:
            embedding = self._pipeline.embed_chips_sync([self._as_chip(image)])[0]
            # The whole file is the face.
            whole: Box = (0.0, 0.0, float(image.shape[1]), float(image.shape[0]))
            return FileEmbedding(embedding, None, time.perf_counter() - start, whole, 1)
        face, faces_in_image = self._pipeline.analyze_chosen_sync(image, self._options.face_policy)
        seconds = time.perf_counter() - start
        if face is None:
            return FileEmbedding(None, None, seconds, None, faces_in_image)
        box = _as_box(face.face.box)
        return FileEmbedding(face.embedding, face.face.score, seconds, box, faces_in_image)

    def _as_chip(self, image: ImageArray) -> ImageArray:
        width, height = self._pipeline.chip_size
        if image.shape[:2] == (height, width):
            return image
        shrinking = image.shape[1] > width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=interpolation))


def _as_box(box: FloatArray) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return (x1, y1, x2, y2)


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "1 s"  # "about 0 s left" would read as done
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_progress(label: str, progress: EmbedProgress) -> str:
    """``label: 120/400 images (100 from cache, 20 computed), 35.2 images/s, about 8 s left``."""
    text = (
        f"{label}: {progress.done}/{progress.total} images "
        f"({progress.cache_hits} from cache, {progress.computed} computed)"
    )
    rate, left = progress.rate, progress.seconds_left
    if rate is not None and left is not None:
        text += f", {rate:.1f} images/s, "
        text += "done" if progress.done == progress.total else f"about {_duration(left)} left"
    return text


def stderr_progress(label: str, interval_s: float = 2.0) -> ProgressCallback:
    """A progress callback writing ``format_progress`` to stderr at most every ``interval_s``
    seconds, and always for the first and the last image (a long run shows its pace early)."""
    last_report = -float("inf")

    def report(progress: EmbedProgress) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress.done in (1, progress.total) or now - last_report >= interval_s:
            last_report = now
            print(format_progress(label, progress), file=sys.stderr, flush=True)

    return report
