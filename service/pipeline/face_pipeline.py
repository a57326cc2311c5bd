"""FacePipeline: detect → quality → align → embed, the one composition used everywhere.

The API (async, micro-batched embedding) and the batch tools (face-eval, benchmarks; ``*_sync``)
run the same steps through the same methods, so what is measured is what is served.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.pipeline.align import align_to_template
from service.pipeline.batcher import MicroBatcher
from service.pipeline.coarse_choice import CoarsePass
from service.pipeline.detect import DetectionOptions, FaceDetector
from service.pipeline.detectors import build_detector
from service.pipeline.embed import Embedder
from service.pipeline.embed_ensemble import EnsembleEmbedder, WeightedMember
from service.pipeline.face_choice import choose_face
from service.pipeline.quality import assess_quality
from service.pipeline.runtime import CPU, RuntimeOptions, create_session
from service.pipeline.types import AlignedFace, DetectedFace, EmbeddedFace, FloatArray, ImageArray
from service.settings import FacePolicy

if TYPE_CHECKING:
    from service.packs.loader import LoadedPack
    from service.packs.manifest import PackManifest
    from service.settings import Settings


class ChipEmbedder(Protocol):
    """A pack's embedder: aligned chips (the pipeline's chip size) → (N, D) unit embeddings."""

    def embed(self, chips: Sequence[ImageArray]) -> FloatArray: ...

    @property
    def max_batch(self) -> int:
        """Chips per model run; ``embed`` splits longer lists."""
        ...


# Stored crops keep this much extra context on each side (fraction of the chip's width/height), so
# that re-embedding with a pack whose template crops looser still finds the face's surroundings.
STORAGE_CROP_MARGIN = 0.25
# Embedder batch caps when FACE_BATCH_MAX_SIZE is 0 (docs/benchmarks.md, "Batch size on CPU").
CPU_BATCH_MAX_SIZE = 4
ACCELERATOR_BATCH_MAX_SIZE = 32


def resolved_batch_max_size(configured: int, embedder_providers: list[str]) -> int:
    """``configured`` when set, else the cap that suits the provider the embedder runs on."""
    if configured > 0:
        return configured
    on_cpu = not embedder_providers or embedder_providers[0] == CPU
    return CPU_BATCH_MAX_SIZE if on_cpu else ACCELERATOR_BATCH_MAX_SIZE


class FacePipeline:
    """A pack's detector and embedder sessions plus the micro-batcher; ``async with`` it to serve."""

    def __init__(
        self,
        manifest: PackManifest,
        detector: FaceDetector,
        embedder: ChipEmbedder,
        *,
        providers: dict[str, list[str]],
        coarse: CoarsePass | None = None,
        batch_max_size: int = 32,
        batch_max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._manifest = manifest
        self._detector = detector
        self._coarse = coarse
        self._embedder = embedder
        self._providers = providers
        self._template = np.asarray(manifest.chip_template, dtype=np.float32)
        self._batcher = MicroBatcher(
            embedder.embed, max_batch_size=batch_max_size, max_wait_ms=batch_max_wait_ms, on_batch=on_batch
        )

    @classmethod
    def from_pack(
        cls,
        pack: LoadedPack,
        settings: Settings,
        *,
        on_batch: Callable[[int], None] | None = None,
        flip: bool | None = None,
    ) -> FacePipeline:
        """Sessions for the pack's models on the configured device (RuntimeUnavailableError if absent).

        ``flip`` forces flip TTA on or off for every embedder (None: as the manifest says; face-eval).
        """
        runtime = RuntimeOptions.from_settings(settings)
        detector_session = create_session(pack.detector_path, runtime)
        options = DetectionOptions.from_settings(settings, pack.manifest.detector)
        detector = build_detector(pack.manifest.detector, detector_session, options)
        coarse = None
        if 0 < settings.det_coarse_input_size < options.input_size:
            coarse_options = dataclasses.replace(options, input_size=settings.det_coarse_input_size)
            coarse_detector = build_detector(pack.manifest.detector, detector_session, coarse_options)
            coarse = CoarsePass(coarse_detector, settings.det_coarse_input_size)
        sessions = [create_session(path, runtime) for path in pack.member_paths or (pack.embedder_path,)]
        batch_max_size = resolved_batch_max_size(settings.batch_max_size, list(sessions[0].get_providers()))
        members = [
            Embedder(session, spec, max_batch=batch_max_size, flip=flip)
            for session, spec in zip(sessions, pack.manifest.embedders, strict=True)
        ]
        embedder: ChipEmbedder = members[0]
        ensemble = pack.manifest.ensemble
        if ensemble is not None:
            weighted = [
                WeightedMember(m, spec.weight) for m, spec in zip(members, ensemble.members, strict=True)
            ]
            embedder = EnsembleEmbedder(ensemble, weighted)
        embedder_session = sessions[0]
        return cls(
            pack.manifest,
            detector,
            embedder,
            providers={
                "detector": list(detector_session.get_providers()),
                "embedder": list(embedder_session.get_providers()),
            },
            coarse=coarse,
            batch_max_size=batch_max_size,
            batch_max_wait_ms=settings.batch_max_wait_ms,
            on_batch=on_batch,
        )

    # ------------------------------------------------------------------ facts

    @property
    def manifest(self) -> PackManifest:
        return self._manifest

    @property
    def pack_id(self) -> str:
        return self._manifest.id

    @property
    def embedding_size(self) -> int:
        return self._manifest.embedding_size

    @property
    def embed_batch_max_size(self) -> int:
        return self._embedder.max_batch

    @property
    def chip_size(self) -> tuple[int, int]:
        """(width, height) of the aligned chips the embedder takes."""
        return self._manifest.chip_size

    @property
    def template(self) -> FloatArray:
        """(5, 2) positions of the five landmarks on the chip."""
        return self._template.copy()

    @property
    def providers(self) -> dict[str, list[str]]:
        """Execution providers in use, per model role ("detector", "embedder")."""
        return {role: list(names) for role, names in self._providers.items()}

    # ------------------------------------------------------------------ lifecycle (async serving)

    async def start(self) -> None:
        await self._batcher.start()

    async def stop(self) -> None:
        await self._batcher.stop()

    async def __aenter__(self) -> FacePipeline:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._batcher.stop(drain=exc_type is None)

    # ------------------------------------------------------------------ steps

    def detect(self, image: ImageArray) -> list[DetectedFace]:
        """Faces in an RGB image, largest first (blocking: call it off the event loop)."""
        return self._detector.detect(image)

    def detect_chosen(
        self, image: ImageArray, policy: FacePolicy, *, coarse: bool = True
    ) -> tuple[list[DetectedFace], int | None]:
        """The faces (largest first) and the index of the one ``policy`` chooses (None: no face).

        With ``coarse`` (and FACE_DET_COARSE_INPUT_SIZE set) a coarse pass may settle the choice; its
        face list then lacks faces too small for it (``service.pipeline.coarse_choice``). Callers that
        index faces by the full detection's order pass ``coarse=False``.
        """
        settled = self._coarse.settle(image, policy) if coarse and self._coarse is not None else None
        if settled is not None:
            return settled
        faces = self.detect(image)
        return faces, choose_face(faces, (image.shape[1], image.shape[0]), policy)

    def analyze_chosen_sync(self, image: ImageArray, policy: FacePolicy) -> tuple[EmbeddedFace | None, int]:
        """The face ``policy`` chooses, embedded, and how many faces the image has (blocking)."""
        faces, index = self.detect_chosen(image, policy)
        if index is None:
            return None, 0
        aligned = self.align_and_assess(image, [faces[index]])
        return _embedded(aligned, self.embed_chips_sync([aligned[0].chip]))[0], len(faces)

    def align(self, image: ImageArray, face: DetectedFace) -> ImageArray:
        """The face's chip: aligned onto the pack's template at the embedder's input size."""
        return align_to_template(image, face.landmarks, self._template, self.chip_size)

    def storage_crop(self, image: ImageArray, face: DetectedFace) -> tuple[ImageArray, FloatArray]:
        """A crop to keep with an enrolled face, and where its five landmarks lie in it.

        The chip's geometry with ``STORAGE_CROP_MARGIN`` more context on every side: any pack can
        be re-aligned from it later (``service.gallery.reembed``).
        """
        width, height = self.chip_size
        margin = np.asarray([round(width * STORAGE_CROP_MARGIN), round(height * STORAGE_CROP_MARGIN)])
        landmarks = (self._template + margin).astype(np.float32)
        size = (width + 2 * int(margin[0]), height + 2 * int(margin[1]))
        return align_to_template(image, face.landmarks, landmarks, size), landmarks

    def embed_chips_sync(self, chips: Sequence[ImageArray]) -> FloatArray:
        """(N, D) unit embeddings of aligned chips, computed now in this thread."""
        return self._embedder.embed(chips)

    async def embed_chips(self, chips: Sequence[ImageArray]) -> FloatArray:
        """(N, D) unit embeddings of aligned chips, through the shared micro-batcher."""
        return await self._batcher.embed(chips)

    def analyze_sync(self, image: ImageArray, *, max_faces: int | None = None) -> list[EmbeddedFace]:
        """Every face (largest first, at most ``max_faces``) with its quality, chip and embedding."""
        aligned = self.detect_and_align(image, max_faces=max_faces)
        return _embedded(aligned, self.embed_chips_sync([item.chip for item in aligned]))

    async def analyze(self, image: ImageArray, *, max_faces: int | None = None) -> list[EmbeddedFace]:
        """``analyze_sync`` for the event loop: detection in a thread, embedding micro-batched."""
        aligned = await asyncio.to_thread(self.detect_and_align, image, max_faces=max_faces)
        return await self.embed_aligned(aligned)

    async def embed_aligned(self, aligned: Sequence[AlignedFace]) -> list[EmbeddedFace]:
        """Embed already aligned faces through the micro-batcher."""
        if not aligned:
            return []
        return _embedded(aligned, await self.embed_chips([item.chip for item in aligned]))

    def detect_and_align(self, image: ImageArray, *, max_faces: int | None = None) -> list[AlignedFace]:
        """Every face (largest first, at most ``max_faces``) aligned and assessed, not embedded."""
        if max_faces is not None and max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        return self.align_and_assess(image, self.detect(image)[:max_faces])

    def align_and_assess(self, image: ImageArray, faces: Sequence[DetectedFace]) -> list[AlignedFace]:
        """Each face's chip and quality (blocking)."""
        aligned = []
        for face in faces:
            chip = self.align(image, face)
            aligned.append(AlignedFace(face, assess_quality(face, chip), chip))
        return aligned


def _embedded(aligned: Sequence[AlignedFace], embeddings: FloatArray) -> list[EmbeddedFace]:
    return [
        EmbeddedFace(face=item.face, quality=item.quality, chip=item.chip, embedding=embedding)
        for item, embedding in zip(aligned, embeddings, strict=True)
    ]
