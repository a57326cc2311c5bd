"""The methods a path accepts, over every route of the app (for the ``Allow`` header of a 405).

Starlette answers a 405 from the first route whose path matched and lists only that route's methods;
``/v1/subjects`` has a GET route and a POST route, so its 405 named one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Match
from starlette.types import Scope


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Sorted union of the methods of every route whose path matches ``scope``'s path."""
    methods: set[str] = set()
    # iter_route_contexts walks included routers (FastAPI keeps them as nested router objects).
    for route in iter_route_contexts(routes):
        if not route.methods:  # mounts, websocket routes
            continue
        match, _ = route.matches(scope)
        if match in (Match.FULL, Match.PARTIAL):
            methods |= set(route.methods)
    return sorted(methods)
