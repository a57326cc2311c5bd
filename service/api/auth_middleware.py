"""Key checks at the HTTP edge, before FastAPI: no key in URLs, no body read without a valid key."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.asgi import HttpMiddleware
from service.api.deps import (
    AUTHENTICATED_STATE,
    RESOURCES_STATE,
    counted_unauthenticated,
    presented_key,
)
from service.api.errors import FieldError, problem_response_for_scope
from service.api.log_filters import is_credential_parameter, normalized_parameter
from service.api.metrics import HttpMetrics
from service.usecases.resources import ServiceResources
from service.usecases.threads import in_worker


def _declares_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class EarlyAuthMiddleware(HttpMiddleware):
    """Refuse a request that carries a body and no valid key before a byte of the body is read.

    FastAPI parses the body (a multipart upload of many megabytes) before it runs the dependencies
    that check the key; an unauthenticated caller must not get that far. The answer closes the
    connection, so the client need not send the body at all. Scopes are still checked by the route.
    """

    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        resources = scope.get("state", {}).get(RESOURCES_STATE)
        if not _declares_body(headers) or not isinstance(resources, ServiceResources):
            await self.app(scope, receive, send)
            return
        presented = presented_key(headers)
        try:
            principal = await in_worker(resources.authenticator.authenticate, presented)
        except Exception:  # the route's own dependency runs the same check and answers for it
            await self.app(scope, receive, send)
            return
        if principal is not None:
            # The route's dependency takes this answer instead of reading the key store again.
            scope["state"][AUTHENTICATED_STATE] = principal
            await self.app(scope, receive, send)
            return
        error = counted_unauthenticated(self.metrics, presented)
        response = problem_response_for_scope(
            scope,
            status=error.status,
            code=error.code,
            detail=error.detail,
            headers={**error.headers, "Connection": "close"},
        )
        await response(scope, receive, send)


class CredentialsInUrlMiddleware(HttpMiddleware):
    """Refuse an API key (or anything named like a credential) in the query string with a 400.

    URLs are written to access logs, proxy logs and browser history; a key there is a leaked key.
    (The access log also redacts such values: service/api/log_filters.py.)
    """

    async def handle_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"").decode("latin-1")
        names = [part.partition("=")[0] for part in query.split("&") if part]
        credential = next((name for name in names if is_credential_parameter(name)), None)
        if credential is None:
            await self.app(scope, receive, send)
            return
        field = f"query.{normalized_parameter(credential)}"
        response = problem_response_for_scope(
            scope,
            status=400,
            code="credentials_in_url",
            detail="API keys are not accepted in the URL (it ends up in logs): "
            "send the key in the X-API-Key header or as Authorization: Bearer",
            errors=[FieldError(field, "a credential in the query string", "credentials_in_url")],
        )
        await response(scope, receive, send)
