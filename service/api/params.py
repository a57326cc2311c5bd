"""Request parameters shared by several routes (``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

THRESHOLD_HELP = 'operating point name (e.g. "default", "far=1e-3") or a cosine value in [-1, 1]'

# The threshold may come as a query parameter too (a body field of the same name wins).
ThresholdQuery = Annotated[str | None, Query(alias="threshold", description=THRESHOLD_HELP, max_length=64)]
