"""The uvicorn server of ``face-service serve``: timeouts, a connection limit and log hygiene.

uvicorn's own keep-alive timer starts only after a response, and any byte received cancels it, so a
connection that never sends a request, or sends half a request head (slowloris), is held forever.
``HeaderTimeoutH11Protocol`` adds one deadline per request head: armed when the connection opens and
after each response, cleared only once the complete head has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.log_filters import install_server_log_filters
from service.settings import Settings

logger = logging.getLogger(__name__)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (``header_timeout_s``)."""

    header_timeout_s: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._head_deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        self._track_request_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track_request_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track_request_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_deadline()
        super().connection_lost(exc)

    def _waiting_on_client(self) -> bool:
        # A head is awaited (IDLE), or our response is done and only an unread body is left (the
        # client keeps the connection by never sending it): nothing of ours is in progress either way.
        their, ours = self.conn.their_state, self.conn.our_state
        return their is h11.IDLE or (ours is h11.DONE and their is h11.SEND_BODY)

    def _track_request_head(self) -> None:
        if self.transport.is_closing() or not self._waiting_on_client():
            self._clear_deadline()
        elif self._head_deadline is None:  # not re-armed per byte: a trickled head gets no extension
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _clear_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing() and self._waiting_on_client():
            logger.debug("closed a connection: no complete request head in %s s", self.header_timeout_s)
            self.transport.close()


def protocol_with_header_timeout(seconds: float) -> type[HeaderTimeoutH11Protocol]:
    """A protocol class bound to ``seconds`` (uvicorn instantiates the class it is given)."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout_s": seconds})


def server_config(app: Any, settings: Settings) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs with (tests build in-process servers from it too)."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        proxy_headers=True,
        server_header=False,
        http=protocol_with_header_timeout(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.graceful_shutdown_timeout_s,
    )
    # uvicorn configures its loggers when the Config is built; the filters go on after that.
    explicit_key = settings.api_key.get_secret_value() if settings.api_key is not None else ""
    install_server_log_filters(known_secrets=[explicit_key] if explicit_key else [])
    return config


def serve(app: Any, settings: Settings) -> bool:
    """Run until stopped; False when the server never started (the port was taken, say)."""
    server = uvicorn.Server(server_config(app, settings))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl+C it handled at shutdown
        server.run()
    return server.started
