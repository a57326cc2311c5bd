"""Pure ASGI middleware (no body buffering, no BaseHTTPMiddleware): request ids, the request size limit,
and 500s that keep the connection. The key checks at the edge: service/api/auth_middleware.py."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping

from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.asgi import HttpMiddleware
from service.api.errors import REQUEST_ID_HEADER, problem_response_for_scope, request_id_of

logger = logging.getLogger(__name__)

# A caller's id is echoed only when it is short and plain (it ends up in logs and headers).
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware(HttpMiddleware):
    """Take ``X-Request-ID`` from the caller (when sane) or generate one; echo it on every response."""

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        presented = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = presented if _CLIENT_REQUEST_ID.fullmatch(presented) else uuid.uuid4().hex
        # The per-request state dict (a copy of the lifespan state) is shared by everything downstream.
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


class RequestTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit.

    An HTTPException so FastAPI's body parsing re-raises it as is (anything else becomes a 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class BodySizeLimitMiddleware(HttpMiddleware):
    """Refuse bodies over ``max_bytes``: at once from Content-Length, else while streaming.

    ``path_limits``: another limit for the requests to one exact path (a gallery archive's upload).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, path_limits: Mapping[str, int] | None = None) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
            detail = (
                f"the request body of {declared} bytes exceeds the limit of {max_bytes} bytes"
                if declared.isdigit()
                else "invalid Content-Length header"
            )
            status = 413 if declared.isdigit() else 400
            code = "content_too_large" if declared.isdigit() else "bad_request"
            response = problem_response_for_scope(scope, status=status, code=code, detail=detail)
            await response(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise RequestTooLargeError(max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class UnhandledErrorMiddleware(HttpMiddleware):
    """Answer an unexpected exception with a 500 problem and keep the connection alive.

    Starlette's ServerErrorMiddleware sends its 500 and then re-raises, and uvicorn closes (resets)
    a keep-alive connection whose app raised after the response began. Caught here, the exception is
    logged with its traceback and goes no further. Once a response has begun it is re-raised: only
    closing the connection ends half a response cleanly.
    """

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        response_started = False

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:
            if response_started:
                raise
            # %r: a decoded path may hold control characters; the log stays one record per error.
            logger.error(
                "unhandled %s on %s %r (request %s)",
                type(exc).__name__,
                scope.get("method"),
                scope.get("path"),
                request_id_of(scope),
                exc_info=exc,
            )
            response = problem_response_for_scope(
                scope, status=500, code="internal_error", detail="an unexpected error occurred"
            )
            await response(scope, receive, send)
