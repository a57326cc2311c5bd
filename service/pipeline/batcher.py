"""MicroBatcher: coalesces embedding work from concurrent requests into larger model runs.

One embedding run of 16 chips costs far less than 16 runs of one, so requests that arrive within
``max_wait_ms`` of each other share a run. Runs happen one at a time in a dedicated worker thread:
never on the event loop, and never two at once competing for the same cores.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from service.pipeline.types import FloatArray, ImageArray

logger = logging.getLogger(__name__)

EmbedFunction = Callable[[Sequence[ImageArray]], FloatArray]


class BatcherClosedError(RuntimeError):
    """The batcher is not running (not started yet, or stopped)."""


@dataclass
class _Request:
    chips: Sequence[ImageArray]
    future: asyncio.Future[FloatArray]
    enqueued_at: float = field(default=0.0)


class MicroBatcher:
    """``await batcher.embed(chips)`` from any number of tasks; use it as ``async with batcher:``.

    A batch holds whole requests, up to ``max_batch_size`` chips (one request larger than that
    runs alone; the embed function splits it). If a batch of several requests fails, each request
    is retried alone so an error reaches only the caller whose chips caused it.
    """

    def __init__(
        self,
        embed: EmbedFunction,
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._embed = embed
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._pending: deque[_Request] = deque()
        self._pending_chips = 0
        self._wakeup = asyncio.Event()  # something is pending (or we are closing)
        self._full = asyncio.Event()  # pending chips reached max_batch_size
        self._closing = True
        self._worker: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    async def start(self) -> None:
        if self._worker is not None:
            raise RuntimeError("MicroBatcher already started")
        # Fresh events: a batcher may be restarted under another event loop (e.g. between tests).
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-batch")
        self._worker = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self, *, drain: bool = True) -> None:
        """Stop accepting work; finish what is queued (``drain``) or fail it with BatcherClosedError."""
        worker = self._worker
        if worker is None:
            return
        self._closing = True
        self._wakeup.set()
        self._full.set()
        try:
            if drain:
                await worker
            else:
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
        finally:
            self._worker = None
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop(drain=exc_type is None)

    async def embed(self, chips: Sequence[ImageArray]) -> FloatArray:
        """The embed function's result for ``chips``, computed in a shared batch."""
        if not self.running:
            raise BatcherClosedError("the batcher is not running (start it, e.g. in the app lifespan)")
        loop = asyncio.get_running_loop()
        request = _Request(list(chips), loop.create_future(), loop.time())
        self._pending.append(request)
        self._pending_chips += len(request.chips)
        if self._pending_chips >= self._max_batch_size:
            self._full.set()
        self._wakeup.set()
        return await request.future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._pending:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._wait_for_batch(loop)
                await self._dispatch(self._take_batch(), loop)
        finally:
            self._fail_pending(BatcherClosedError("the batcher stopped before this request ran"))

    async def _wait_for_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Until the batch is full, or the oldest request has waited ``max_wait_ms``."""
        deadline = self._pending[0].enqueued_at + self._max_wait_s
        while self._pending_chips < self._max_batch_size and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._full.clear()
            try:
                await asyncio.wait_for(self._full.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Request]:
        batch: list[_Request] = []
        size = 0
        while self._pending:
            request = self._pending[0]
            if batch and size + len(request.chips) > self._max_batch_size:
                break
            self._pending.popleft()
            self._pending_chips -= len(request.chips)
            if request.future.done():  # the caller gave up (cancelled) while waiting
                continue
            batch.append(request)
            size += len(request.chips)
        if self._pending_chips < self._max_batch_size:
            self._full.clear()
        return batch

    async def _dispatch(self, batch: list[_Request], loop: asyncio.AbstractEventLoop) -> None:
        if not batch:
            return
        chips = [chip for request in batch for chip in request.chips]
        self._report_batch(len(chips))
        try:
            embeddings = await loop.run_in_executor(self._executor, self._embed_checked, chips)
        except asyncio.CancelledError:
            for request in batch:
                _reject(request, BatcherClosedError("the batcher was stopped while this request ran"))
            raise
        except Exception as error:
            if len(batch) == 1:
                _reject(batch[0], error)
                return
            # Find the culprit: each request alone, so the others still get their results.
            for request in batch:
                await self._dispatch([request], loop)
            return
        offset = 0
        for request in batch:
            count = len(request.chips)
            _resolve(request, np.array(embeddings[offset : offset + count]))
            offset += count

    def _embed_checked(self, chips: Sequence[ImageArray]) -> FloatArray:
        embeddings = self._embed(chips)
        if embeddings.shape[0] != len(chips):
            raise RuntimeError(f"embed function returned {embeddings.shape[0]} rows for {len(chips)} chips")
        return embeddings

    def _report_batch(self, size: int) -> None:
        if self._on_batch is None:
            return
        try:
            self._on_batch(size)
        except Exception:  # a metrics hook must never break embedding
            logger.exception("MicroBatcher on_batch hook failed")

    def _fail_pending(self, error: Exception) -> None:
        while self._pending:
            _reject(self._pending.popleft(), error)
        self._pending_chips = 0


def _resolve(request: _Request, embeddings: FloatArray) -> None:
    if not request.future.done():  # its caller may have been cancelled meanwhile
        request.future.set_result(embeddings)


def _reject(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
