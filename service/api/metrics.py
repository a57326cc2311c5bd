"""Prometheus metrics on a registry owned by one app (never the process-wide default registry).

Several apps in one process (tests, a restart in place) each count their own requests.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi import HttpMiddleware

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "<unmatched>"
# Any other method (HTTP allows any token, and callers need no key to send one) is counted as one
# label: a label per made-up method grew /metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_latency = Histogram(
            "face_http_request_duration_seconds",
            "Request latency by route template, method and status code.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self.auth_failures = Counter(
            "face_auth_failures",
            "Requests refused by authentication or scope.",
            ["reason"],
            registry=self.registry,
        )
        self.gallery_subjects = Gauge(
            "face_gallery_subjects", "Subjects in the gallery.", registry=self.registry
        )
        self.gallery_faces = Gauge(
            "face_gallery_faces", "Enrolled faces in the gallery.", registry=self.registry
        )
        # Equal to face_gallery_faces when the search index agrees with the store (worth an alert if not).
        self.gallery_indexed_faces = Gauge(
            "face_gallery_indexed_faces", "Faces in the search index.", registry=self.registry
        )

    def observe_batch(self, size: int) -> None:
        """Hook for the embedding micro-batcher."""
        self.embedding_batch_size.observe(size)

    def render(self, *, gallery_subjects: int, gallery_faces: int, gallery_indexed_faces: int) -> bytes:
        """The text exposition, with gallery sizes read at scrape time. Blocking: call it from a worker
        thread (``run_in_threadpool``), never on the event loop."""
        self.gallery_subjects.set(gallery_subjects)
        self.gallery_faces.set(gallery_faces)
        self.gallery_indexed_faces.set(gallery_indexed_faces)
        return generate_latest(self.registry)


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _route_template(scope: Scope) -> str:
    # FastAPI's router puts the matched route in the scope; its path template keeps label cardinality
    # low, and every path that matches no route shares one label.
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED_ROUTE


class MetricsMiddleware(HttpMiddleware):
    """Time every HTTP request and label it with its route template, method and status."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # if the app raises before responding, the server answers 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self.metrics.request_latency.labels(
                route=_route_template(scope), method=method_label(scope["method"]), status=str(status)
            ).observe(time.perf_counter() - started)
