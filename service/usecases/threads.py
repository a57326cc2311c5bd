"""The one way use cases leave the event loop: blocking work in a worker thread."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

T = TypeVar("T")


async def in_worker(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``function(*args, **kwargs)`` in anyio's worker threads (the pool Starlette's own hops use)."""
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))
