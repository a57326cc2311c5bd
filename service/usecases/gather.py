"""``gather_all``: ``asyncio.gather`` that leaves no work running behind a failed request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_all(*awaitables: Awaitable[T]) -> list[T]:
    """Results in order; on the first error the other tasks are cancelled and awaited, then it is raised.

    Plain ``gather`` raises the first error at once and lets the siblings run on: work (and the
    memory it holds, e.g. decoded images in the pixel budget) outliving the answer. ``TaskGroup``
    cancels them but wraps the error in an ``ExceptionGroup``, which the API's handlers don't match.
    """
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:  # this request itself was cancelled
        await _cancel(tasks)
        raise
    await _cancel(pending)
    for task in tasks:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
    return [task.result() for task in tasks]


async def _cancel(tasks: Iterable[asyncio.Future[Any]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
