"""The service's own Prometheus metrics (what the use cases count), on a registry owned by one service.

Never the process-wide default registry: several services in one process (tests, a restart in
place) each count their own. Front ends register their metrics (HTTP requests) on ``registry`` too,
so that one exposition holds everything.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.gallery.gallery import GallerySizes

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.faces_detected = Counter(
            "face_faces_detected", "Faces found by the detector.", registry=self.registry
        )
        self.faces_embedded = Counter(
            "face_faces_embedded", "Faces turned into embeddings.", registry=self.registry
        )
        self.embedding_batch_size = Histogram(
            "face_embedding_batch_size",
            "Chips per embedder run (after micro-batching across requests).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.enrollment_rejections = Counter(
            "face_enrollment_rejections",
            "Images refused at enrollment, by reason.",
            ["reason"],
            registry=self.registry,
        )
        # One series per collection ("default" included): sum() for the service's totals.
        self.gallery_subjects = Gauge(
            "face_gallery_subjects", "Subjects in the gallery.", ["collection"], registry=self.registry
        )
        self.gallery_faces = Gauge(
            "face_gallery_faces", "Enrolled faces in the gallery.", ["collection"], registry=self.registry
        )
        # Equal to face_gallery_faces when the search index agrees with the store (worth an alert if not).
        self.gallery_indexed_faces = Gauge(
            "face_gallery_indexed_faces", "Faces in the search index.", ["collection"], registry=self.registry
        )

    def observe_batch(self, size: int) -> None:
        """Hook for the embedding micro-batcher."""
        self.embedding_batch_size.observe(size)

    def render(self, sizes: Mapping[str, GallerySizes]) -> bytes:
        """The text exposition, with each collection's gallery sizes read at scrape time (blocking: a
        worker thread)."""
        for collection, size in sizes.items():
            self.gallery_subjects.labels(collection=collection).set(size.subjects)
            self.gallery_faces.labels(collection=collection).set(size.faces)
            self.gallery_indexed_faces.labels(collection=collection).set(size.indexed_faces)
        return generate_latest(self.registry)
