"""MicroBatcher: coalescing, result routing, error isolation, lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from service.pipeline.batcher import BatcherClosedError, MicroBatcher

DIM = 4


class CountingEmbedder:
    """A deterministic embedding (per-chip pixel statistics) that records every call it gets."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, chips: Sequence[np.ndarray]) -> np.ndarray:
        self.threads.add(threading.current_thread().name)
        self.batch_sizes.append(len(chips))
        for chip in chips:
            if chip.max() == 255:  # a chip this "model" cannot handle
                raise ValueError("saturated chip")
        time.sleep(self.delay_s)
        return self.direct(chips)

    @staticmethod
    def direct(chips: Sequence[np.ndarray]) -> np.ndarray:
        rows = [[chip.mean(), chip.std(), float(chip[0, 0, 0]), float(chip.sum() % 97)] for chip in chips]
        return np.asarray(rows, dtype=np.float32).reshape(len(chips), DIM)


def _chips(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (6, 6, 3), dtype=np.uint8) for _ in range(count)]


def test_concurrent_callers_share_batches_and_get_their_own_results() -> None:
    embedder = CountingEmbedder(delay_s=0.02)
    reported: list[int] = []
    requests = [_chips(1 + i % 3, seed=i) for i in range(24)]

    async def scenario() -> list[np.ndarray]:
        async with MicroBatcher(
            embedder, max_batch_size=16, max_wait_ms=20, on_batch=reported.append
        ) as batcher:
            return await asyncio.gather(*(batcher.embed(chips) for chips in requests))

    results = asyncio.run(scenario())
    for chips, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result, CountingEmbedder.direct(chips))
    total = sum(len(chips) for chips in requests)
    assert sum(embedder.batch_sizes) == total
    assert len(embedder.batch_sizes) < len(requests) / 2  # coalesced into fewer, larger runs
    assert max(embedder.batch_sizes) <= 16
    assert reported == embedder.batch_sizes
    assert all(name.startswith("embed-batch") for name in embedder.threads)  # never on the event loop


def test_a_request_larger_than_the_batch_runs_alone() -> None:
    embedder = CountingEmbedder()
    chips = _chips(10, seed=3)

    async def scenario() -> np.ndarray:
        async with MicroBatcher(embedder, max_batch_size=4, max_wait_ms=1) as batcher:
            return await batcher.embed(chips)

    np.testing.assert_array_equal(asyncio.run(scenario()), CountingEmbedder.direct(chips))
    assert embedder.batch_sizes == [10]


def test_an_error_reaches_only_the_caller_whose_chips_caused_it() -> None:
    embedder = CountingEmbedder()
    good = [_chips(2, seed=s) for s in range(4)]
    bad = _chips(1, seed=9)
    bad[0][0, 0, 0] = 255

    async def scenario() -> list[np.ndarray | BaseException]:
        async with MicroBatcher(embedder, max_batch_size=32, max_wait_ms=30) as batcher:
            calls = [batcher.embed(chips) for chips in good[:2]] + [batcher.embed(bad)]
            calls += [batcher.embed(chips) for chips in good[2:]]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    assert isinstance(results[2], ValueError)
    for chips, result in zip(good, results[:2] + results[3:], strict=True):
        assert isinstance(result, np.ndarray)
        np.testing.assert_array_equal(result, CountingEmbedder.direct(chips))
    assert embedder.batch_sizes[0] == 9  # all five requests were tried together first


def test_stop_drains_queued_work_then_refuses_new_work() -> None:
    embedder = CountingEmbedder(delay_s=0.01)

    async def scenario() -> tuple[list[np.ndarray], MicroBatcher]:
        batcher = MicroBatcher(embedder, max_batch_size=2, max_wait_ms=50)
        await batcher.start()
        pending = [asyncio.create_task(batcher.embed(_chips(1, seed=s))) for s in range(6)]
        await asyncio.sleep(0)  # let them enqueue
        await batcher.stop(drain=True)
        return [task.result() for task in pending], batcher

    results, batcher = asyncio.run(scenario())
    assert len(results) == 6
    assert sum(embedder.batch_sizes) == 6
    assert not batcher.running

    async def after_stop() -> None:
        await batcher.embed(_chips(1, seed=0))

    with pytest.raises(BatcherClosedError):
        asyncio.run(after_stop())


def test_stop_without_drain_fails_waiting_callers_cleanly() -> None:
    embedder = CountingEmbedder(delay_s=0.2)

    async def scenario() -> list[object]:
        batcher = MicroBatcher(embedder, max_batch_size=1, max_wait_ms=0)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.embed(_chips(1, seed=s))) for s in range(4)]
        await asyncio.sleep(0.05)  # the first batch is running in the worker thread
        await batcher.stop(drain=False)
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert all(isinstance(outcome, BatcherClosedError) for outcome in outcomes)
    assert embedder.batch_sizes == [1]  # nothing queued was started after the stop


def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    embedder = CountingEmbedder(delay_s=0.01)

    async def scenario() -> list[object]:
        async with MicroBatcher(embedder, max_batch_size=8, max_wait_ms=30) as batcher:
            tasks = [asyncio.create_task(batcher.embed(_chips(1, seed=s))) for s in range(3)]
            await asyncio.sleep(0)
            tasks[1].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    assert isinstance(outcomes[1], asyncio.CancelledError)
    np.testing.assert_array_equal(outcomes[0], CountingEmbedder.direct(_chips(1, seed=0)))
    np.testing.assert_array_equal(outcomes[2], CountingEmbedder.direct(_chips(1, seed=2)))
    assert embedder.batch_sizes == [2]


def test_embedding_before_start_is_refused() -> None:
    async def scenario() -> None:
        await MicroBatcher(CountingEmbedder()).embed(_chips(1, seed=0))

    with pytest.raises(BatcherClosedError):
        asyncio.run(scenario())
