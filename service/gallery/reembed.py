"""Re-embed a gallery with another model pack, from the crops stored at enrollment.

Embeddings of different packs are not comparable, so a gallery is pinned to one pack. To switch,
every stored crop is re-aligned onto the NEW pack's template and embedded with the new pack.

Why this works: a stored crop is the face aligned to the old pack's template with a margin
around it (``FacePipeline.storage_crop``), saved with the five landmark positions in the crop.
Those landmarks are enough to align the crop onto any other template, and the margin gives a
pack with a looser crop the context it needs (regions beyond the margin are filled with black).

The switch is one store transaction (new embeddings and the new pin together): a crash or an
error at any point leaves the gallery exactly as it was, on the old pack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.gallery.backends import open_store
from service.gallery.store import GalleryError, PackPin, StoreOptions
from service.pipeline.align import align_to_template
from service.pipeline.types import FloatArray, ImageArray

logger = logging.getLogger(__name__)


class ChipEmbedder(Protocol):
    """What re-embedding needs from a pack; ``FacePipeline`` provides it."""

    @property
    def pack_id(self) -> str: ...

    @property
    def embedding_size(self) -> int: ...

    @property
    def chip_size(self) -> tuple[int, int]: ...  # (width, height)

    @property
    def template(self) -> FloatArray: ...  # (5, 2) landmark positions on the chip

    def embed_chips_sync(self, chips: Sequence[ImageArray]) -> FloatArray: ...


@dataclass(frozen=True)
class ReembedReport:
    old_pack_id: str
    new_pack_id: str
    reembedded: int
    dropped: int  # faces deleted because they had no stored crop (only with drop_faces_without_crop)
    seconds: float


def reembed_gallery(
    data_dir: Path,
    embedder: ChipEmbedder,
    *,
    batch_size: int = 64,
    drop_faces_without_crop: bool = False,
    progress: Callable[[int, int], None] | None = None,
    options: StoreOptions | None = None,
) -> ReembedReport:
    """Re-embed every face of the gallery with ``embedder`` and pin it to its pack.

    The gallery is the SQLite file in ``data_dir``, or the shared database ``options`` name. The
    service must be stopped: SQLite's lock file is taken; replicas of a shared gallery that still run
    the old pack see the re-embedding in their feed and refuse to compare until restarted on the new
    one. Faces enrolled without a crop cannot be re-embedded: the call fails, changing nothing,
    unless ``drop_faces_without_crop``.
    """
    started = time.perf_counter()
    opened = open_store(Path(data_dir), options or StoreOptions(), must_exist=True)
    store = opened.store
    try:
        old = store.pinned_pack()
        if old is None or old.pack_id == embedder.pack_id:
            return ReembedReport(
                old.pack_id if old else "", embedder.pack_id, 0, 0, time.perf_counter() - started
            )
        uncropped = store.faces_without_crop()
        if uncropped and not drop_faces_without_crop:
            raise GalleryError(
                f"{len(uncropped)} faces were enrolled without a stored crop (FACE_STORE_CROPS=false) and "
                "cannot be re-embedded; re-enroll them, or allow deleting them (--drop-faces-without-crop)"
            )
        total = store.counts().faces - len(uncropped)
        new_pin = PackPin(embedder.pack_id, embedder.embedding_size)
        with store.repinning(new_pin, delete_unconverted=drop_faces_without_crop) as writer:
            for batch in store.iter_crops(batch_size):
                chips = [
                    align_to_template(crop.image, crop.landmarks, embedder.template, embedder.chip_size)
                    for _, crop in batch
                ]
                writer.write([index_id for index_id, _ in batch], embedder.embed_chips_sync(chips))
                if progress is not None:
                    progress(writer.written, total)
        report = ReembedReport(
            old.pack_id, embedder.pack_id, writer.written, len(uncropped), time.perf_counter() - started
        )
        logger.info(
            "re-embedded %d faces: %s -> %s", report.reembedded, report.old_pack_id, report.new_pack_id
        )
        return report
    finally:
        opened.close()
