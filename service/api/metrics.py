"""HTTP request metrics (latency by route, auth failures) and the middleware that times requests.

They live on the registry of the service's own metrics (``service.usecases.metrics``): never the
process-wide default registry, so several apps in one process (tests, a restart in place) each count
their own requests.
"""

from __future__ import annotations

import time

from fastapi.routing import iter_route_contexts
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi import HttpMiddleware

METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "<unmatched>"
# Any other method (HTTP allows any token, and callers need no key to send one) is counted as one
# label: a label per made-up method grew /metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpMetrics:
    """The HTTP front end's metrics, registered on the service's registry (one exposition for all)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.request_latency = Histogram(
            "face_http_request_duration_seconds",
            "Request latency by route template, method and status code.",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "face_auth_failures",
            "Requests refused by authentication, scope or collection.",
            ["reason"],
            registry=registry,
        )


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _route_template(scope: Scope) -> str:
    # FastAPI's router puts the matched route in the scope; its path template keeps label cardinality
    # low, and every path that matches no route shares one label.
    route = scope.get("route")
    if route is None:
        return UNMATCHED_ROUTE
    # That route is the one its router declared, without the prefix it was included under (a router
    # included twice, under /v1 and /v1/collections/{collection}, has one route object): the app's
    # route contexts know each include's full template.
    for context in iter_route_contexts(getattr(scope.get("app"), "routes", ())):
        if context.original_route is route and context.matches(scope)[0] is not Match.NONE:
            return str(context.path_format)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else UNMATCHED_ROUTE


class MetricsMiddleware(HttpMiddleware):
    """Time every HTTP request and label it with its route template, method and status."""

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
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
