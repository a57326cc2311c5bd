"""A process-wide budget of decoded pixels: bounds the memory that decoding and detecting images take.

Each image reserves the pixels it decodes to (after any JPEG draft reduction) before it is decoded,
and gives them back once detection (and, for enrollment, alignment) is done. Reservations are served
first come, first served, so a large image is not starved by a stream of small ones; an image larger
than the whole budget waits until nothing else holds any and then runs alone. A reservation that
waits longer than ``wait_s`` fails with ``PixelBudgetBusyError``: the API answers 503 with Retry-After,
so that memory stays bounded under any load instead of queueing without end.

One instance lives in the app's lifespan-managed services; it is used from one event loop (waiting
is asynchronous and never blocks a worker thread, so decode workers cannot be starved by waiters).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass


class PixelBudgetBusyError(Exception):
    """The budget stayed full for longer than the wait allowed; retry after ``retry_after_s``."""

    def __init__(self, pixels: int, waited_s: float) -> None:
        super().__init__(f"no room for {pixels} decoded pixels within {waited_s:g} s")
        self.pixels = pixels
        self.retry_after_s = max(1, math.ceil(waited_s / 4))


@dataclass
class _Waiter:
    pixels: int
    granted: asyncio.Future[None]


class PixelBudget:
    """At most ``capacity`` decoded pixels held at once; see the module docstring."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 pixel, not {capacity}")
        self.capacity = capacity
        self.wait_s = wait_s
        self._in_use = 0
        self._waiters: deque[_Waiter] = deque()

    @property
    def in_use(self) -> int:
        return self._in_use

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Reserve ``pixels`` (at most the whole budget) for the body of the ``async with``."""
        cost = min(max(pixels, 1), self.capacity)
        await self._acquire(cost)
        try:
            yield
        finally:
            self._release(cost)

    async def _acquire(self, cost: int) -> None:
        if not self._waiters and self._in_use + cost <= self.capacity:
            self._in_use += cost
            return
        waiter = _Waiter(cost, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_s):
                await asyncio.shield(waiter.granted)
        except BaseException as error:
            if waiter.granted.done():  # granted just as the wait ended: give it back
                self._release(cost)
            else:
                self._waiters.remove(waiter)
                waiter.granted.cancel()
                self._grant_waiting()  # a big waiter leaving may let smaller ones behind it in
            if isinstance(error, TimeoutError):
                raise PixelBudgetBusyError(cost, self.wait_s) from None
            raise

    def _release(self, cost: int) -> None:
        self._in_use -= cost
        self._grant_waiting()

    def _grant_waiting(self) -> None:
        # In arrival order, as long as the first waiter fits (first come, first served).
        while self._waiters and self._in_use + self._waiters[0].pixels <= self.capacity:
            waiter = self._waiters.popleft()
            self._in_use += waiter.pixels
            waiter.granted.set_result(None)
