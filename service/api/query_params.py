"""Every query parameter of the API is single-valued: a repeated one is refused, not silently narrowed.

FastAPI keeps the last of ``?cursor=a&cursor=b``; a client that sent two values meant something the API
cannot do, so the request is a 422 naming the parameter instead of an answer to a question it didn't ask.
"""

from __future__ import annotations

from collections import Counter

from fastapi import Request

from service.api.errors import ApiError, FieldError


def single_valued_query(request: Request) -> None:
    """422 ``repeated_parameter`` when a query parameter appears twice (checked by ``require_scope``).

    Every route with query parameters requires a key; the routes without one take none.
    """
    counts = Counter(key for key, _ in request.query_params.multi_items())
    repeated = sorted(key for key, count in counts.items() if count > 1)
    if repeated:
        errors = [
            FieldError(f"query.{key}", "given more than once", "repeated_parameter") for key in repeated
        ]
        raise ApiError(
            422,
            "repeated_parameter",
            f"query parameter(s) given more than once: {', '.join(repeated)}; send each at most once",
            errors=errors,
        )
