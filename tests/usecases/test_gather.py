"""gather_all: results in order; a failure cancels and awaits the siblings before it is raised."""

from __future__ import annotations

import asyncio

import pytest

from service.usecases.gather import gather_all


async def _value(value: int, delay: float) -> int:
    await asyncio.sleep(delay)
    return value


async def _fail(delay: float) -> int:
    await asyncio.sleep(delay)
    raise ValueError("bad image")


def test_results_come_back_in_argument_order() -> None:
    assert asyncio.run(gather_all(_value(1, 0.03), _value(2, 0.0), _value(3, 0.01))) == [1, 2, 3]


@pytest.mark.parametrize("fail_position", [0, 1, 2])
def test_a_failure_cancels_the_siblings_before_it_is_raised(fail_position: int) -> None:
    finished: list[str] = []
    cancelled: list[str] = []

    async def slow(name: str) -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise
        finished.append(name)
        return 0

    async def run() -> None:
        work = [slow("a"), slow("b")]
        work.insert(fail_position, _fail(0.01))
        with pytest.raises(ValueError, match="bad image"):  # the error itself, not an ExceptionGroup
            await gather_all(*work)
        assert sorted(cancelled) == ["a", "b"]  # already cancelled and done when gather_all raised
        assert finished == []

    asyncio.run(run())


def test_cancelling_the_caller_cancels_every_task() -> None:
    cancelled: list[int] = []

    async def slow(index: int) -> int:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(index)
            raise
        return index

    async def run() -> None:
        outer = asyncio.ensure_future(gather_all(slow(0), slow(1)))
        await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert sorted(cancelled) == [0, 1]

    asyncio.run(run())
