"""FastAPI dependencies (``Annotated`` aliases): the resources, the HTTP metrics, the caller's scope."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from service.api.errors import ApiError
from service.api.metrics import HttpMetrics
from service.api.query_params import single_valued_query
from service.auth.authenticator import Principal
from service.auth.keys import Scope, grants
from service.usecases.resources import ServiceResources

# auto_error=False: a missing key becomes our own 401 problem, not FastAPI's plain 403.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")

_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="face-service"'}


# Lifespan-state keys: the service's resources (once built) and the app's HTTP metrics.
RESOURCES_STATE = "resources"
HTTP_METRICS_STATE = "http_metrics"


def get_resources(request: Request) -> ServiceResources:
    resources = getattr(request.state, RESOURCES_STATE, None)
    if not isinstance(resources, ServiceResources):  # only before start-up finished or after shutdown
        raise ApiError(503, "unavailable", "the service is not ready")
    return resources


def get_http_metrics(request: Request) -> HttpMetrics:
    metrics = getattr(request.state, HTTP_METRICS_STATE, None)
    if not isinstance(metrics, HttpMetrics):  # set with the resources by the lifespan
        raise ApiError(503, "unavailable", "the service is not ready")
    return metrics


Resources = Annotated[ServiceResources, Depends(get_resources)]
Metrics = Annotated[HttpMetrics, Depends(get_http_metrics)]


# Request-state key under which EarlyAuthMiddleware leaves the Principal it authenticated.
AUTHENTICATED_STATE = "authenticated_principal"


def presented_key(headers: Headers) -> str | None:
    """The key from ``X-API-Key`` or ``Authorization: Bearer`` (as the dependencies read it)."""
    api_key = headers.get("x-api-key")
    if api_key:
        return api_key
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip() or None


def unauthenticated_error(presented: str | None) -> ApiError:
    """The 401 for a missing or unknown key (its reason is also the ``face_auth_failures`` label)."""
    reason = "missing" if not presented else "invalid"
    return ApiError(
        401,
        f"{reason}_api_key",
        "an API key is required (X-API-Key or Authorization: Bearer)"
        if reason == "missing"
        else "the API key is unknown or revoked",
        headers=_WWW_AUTHENTICATE,
    )


def auth_failure_reason(error: ApiError) -> str:
    return error.code.removesuffix("_api_key")


def require_scope(needed: Scope) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and checks ``needed`` (admin implies every scope)."""

    def dependency(
        request: Request,
        resources: Resources,
        metrics: Metrics,
        api_key: Annotated[str | None, Depends(_api_key_header)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        presented = api_key or (bearer.credentials if bearer is not None else None)
        # A sync dependency: FastAPI runs it in the thread pool, so the key lookup never blocks the loop.
        # Requests with a body were authenticated already, before it was read (EarlyAuthMiddleware).
        principal = getattr(request.state, AUTHENTICATED_STATE, None) or resources.authenticator.authenticate(
            presented
        )
        if principal is None:
            error = unauthenticated_error(presented)
            metrics.auth_failures.labels(reason=auth_failure_reason(error)).inc()
            raise error
        if not grants(principal.scopes, needed):
            metrics.auth_failures.labels(reason="scope").inc()
            held = ", ".join(sorted(scope.value for scope in principal.scopes))
            raise ApiError(
                403, "insufficient_scope", f"this needs the {needed.value!r} scope; the key has: {held}"
            )
        single_valued_query(request)  # after the key check: an unknown caller learns nothing from a 422
        return principal

    return dependency


ReadAccess = Annotated[Principal, Depends(require_scope(Scope.READ))]
EnrollAccess = Annotated[Principal, Depends(require_scope(Scope.ENROLL))]
AdminAccess = Annotated[Principal, Depends(require_scope(Scope.ADMIN))]
