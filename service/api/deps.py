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
from service.settings import DEFAULT_COLLECTION
from service.usecases.errors import CollectionNotFoundError
from service.usecases.resources import ServiceResources

# auto_error=False: a missing key becomes our own 401 problem, not FastAPI's plain 403.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")
_bearer = HTTPBearer(auto_error=False, description="API key as a bearer token")

_WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="face-service"'}


# Lifespan-state keys: the service's resources (once built) and the app's HTTP metrics.
RESOURCES_STATE = "resources"
HTTP_METRICS_STATE = "http_metrics"


def get_service_resources(request: Request) -> ServiceResources:
    """The service's resources: the default collection's, with every collection's in ``collections``."""
    resources = getattr(request.state, RESOURCES_STATE, None)
    if not isinstance(resources, ServiceResources):  # only before start-up finished or after shutdown
        raise ApiError(503, "unavailable", "the service is not ready")
    return resources


def get_resources(request: Request) -> ServiceResources:
    """The resources of the request's collection: ``/v1/collections/{collection}/...``, else the default.

    An unknown collection is a 404 only for a caller whose key could use it: before that, the key is
    checked as the route's scope dependency would (401; 403 for a key limited to other collections),
    so an unknown caller cannot probe which collections exist.
    """
    service = get_service_resources(request)
    collection = request_collection(request)
    try:
        return service.in_collection(collection)
    except CollectionNotFoundError:
        metrics = get_http_metrics(request)
        principal = authenticated_caller(request, service, metrics, presented_key(request.headers))
        refuse_other_collection(principal, collection, metrics)
        raise


def get_http_metrics(request: Request) -> HttpMetrics:
    metrics = getattr(request.state, HTTP_METRICS_STATE, None)
    if not isinstance(metrics, HttpMetrics):  # set with the resources by the lifespan
        raise ApiError(503, "unavailable", "the service is not ready")
    return metrics


Resources = Annotated[ServiceResources, Depends(get_resources)]
ServiceResourcesDep = Annotated[ServiceResources, Depends(get_service_resources)]  # every collection's
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


def request_collection(request: Request) -> str:
    """The collection a request is for: its ``{collection}`` path segment, else the default one."""
    collection = request.path_params.get("collection")
    return collection if isinstance(collection, str) else DEFAULT_COLLECTION


def counted_unauthenticated(metrics: HttpMetrics, presented: str | None) -> ApiError:
    """The 401 for ``presented``, counted in ``face_auth_failures_total`` (the caller raises it)."""
    error = unauthenticated_error(presented)
    metrics.auth_failures.labels(reason=auth_failure_reason(error)).inc()
    return error


def authenticated_caller(
    request: Request, resources: ServiceResources, metrics: HttpMetrics, presented: str | None
) -> Principal:
    """The caller's principal (EarlyAuthMiddleware's, for requests with a body), or the counted 401."""
    principal = getattr(request.state, AUTHENTICATED_STATE, None) or resources.authenticator.authenticate(
        presented
    )
    if principal is None:
        raise counted_unauthenticated(metrics, presented)
    return principal


def refuse_other_collection(principal: Principal, collection: str, metrics: HttpMetrics) -> None:
    """The counted 403 ``collection_not_allowed`` when the key may not use ``collection``."""
    if principal.may_use(collection):
        return
    metrics.auth_failures.labels(reason="collection").inc()
    allowed = ", ".join(sorted(principal.collections or ()))
    raise ApiError(
        403,
        "collection_not_allowed",
        f"this key may use only the collections {allowed}; this request is for collection {collection!r}",
    )


def require_scope(needed: Scope | None, *, per_collection: bool = True) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and checks ``needed`` (admin implies every scope;
    None: any valid key) and, ``per_collection``, that the key may use the request's collection (keys
    limited to collections: docs/api.md, "Keys limited to collections")."""

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
        principal = authenticated_caller(request, resources, metrics, presented)
        if needed is not None and not grants(principal.scopes, needed):
            metrics.auth_failures.labels(reason="scope").inc()
            held = ", ".join(sorted(scope.value for scope in principal.scopes))
            raise ApiError(
                403, "insufficient_scope", f"this needs the {needed.value!r} scope; the key has: {held}"
            )
        if per_collection:
            refuse_other_collection(principal, request_collection(request), metrics)
        single_valued_query(request)  # after the key check: an unknown caller learns nothing from a 422
        return principal

    return dependency


# Read and enroll routes work on one collection (the default one without a {collection} segment,
# GET /v1/info included: it describes the default collection's pack and gallery).
ReadAccess = Annotated[Principal, Depends(require_scope(Scope.READ))]
EnrollAccess = Annotated[Principal, Depends(require_scope(Scope.ENROLL))]
# Routes about no one collection (a listing of collections): the read scope, any collection limit.
ServiceReadAccess = Annotated[Principal, Depends(require_scope(Scope.READ, per_collection=False))]
# Admin keys are never limited to collections; /v1/keys/me answers any key about itself.
AdminAccess = Annotated[Principal, Depends(require_scope(Scope.ADMIN, per_collection=False))]
AnyKey = Annotated[Principal, Depends(require_scope(None, per_collection=False))]
