"""PixelBudget: never more than its capacity held, first come first served, timeouts and cancellation."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.pipeline.pixel_budget import PixelBudget, PixelBudgetBusyError


async def _hold_for(budget: PixelBudget, pixels: int, seconds: float, log: list[tuple[str, int]]) -> None:
    async with budget.hold(pixels):
        log.append(("in", pixels))
        assert budget.in_use <= budget.capacity
        await asyncio.sleep(seconds)
        log.append(("out", pixels))


@settings(max_examples=60, deadline=None, database=None)
@given(
    capacity=st.integers(1, 1000),
    jobs=st.lists(st.tuples(st.integers(0, 1500), st.floats(0.0, 0.003)), min_size=1, max_size=25),
)
def test_concurrent_holders_never_exceed_the_capacity(capacity: int, jobs: list[tuple[int, float]]) -> None:
    budget = PixelBudget(capacity, wait_s=60.0)
    log: list[tuple[str, int]] = []

    async def run() -> None:
        await asyncio.gather(*(_hold_for(budget, pixels, seconds, log) for pixels, seconds in jobs))

    asyncio.run(run())
    assert budget.in_use == 0
    held = 0
    for event, pixels in log:  # replay: the clamped costs in use never pass the capacity
        held += min(max(pixels, 1), capacity) * (1 if event == "in" else -1)
        assert 0 <= held <= capacity
    assert sorted(p for e, p in log if e == "in") == sorted(p for p, _ in jobs)


def test_waiters_are_served_in_arrival_order() -> None:
    budget = PixelBudget(100, wait_s=60.0)
    order: list[str] = []

    async def job(name: str, pixels: int) -> None:
        async with budget.hold(pixels):
            order.append(name)
            await asyncio.sleep(0.01)

    async def run() -> None:
        first = asyncio.create_task(job("first", 100))
        await asyncio.sleep(0)
        big = asyncio.create_task(job("big", 90))  # must not be overtaken by the small ones after it
        await asyncio.sleep(0)
        smalls = [asyncio.create_task(job(f"small{i}", 5)) for i in range(3)]
        await asyncio.gather(first, big, *smalls)

    asyncio.run(run())
    assert order == ["first", "big", "small0", "small1", "small2"]


@pytest.mark.parametrize("wait_s", [0.0, 0.05])
def test_a_wait_past_the_limit_is_busy_and_gives_nothing_away(wait_s: float) -> None:
    budget = PixelBudget(10, wait_s=wait_s)

    async def run() -> PixelBudgetBusyError:
        async with budget.hold(10):
            with pytest.raises(PixelBudgetBusyError) as error:
                async with budget.hold(1):
                    pytest.fail("must not get room")
            assert budget.in_use == 10
        assert budget.in_use == 0
        async with budget.hold(10):  # the failed waiter left no reservation behind
            assert budget.in_use == 10
        return error.value

    error = asyncio.run(run())
    assert error.retry_after_s >= 1


def test_a_cancelled_waiter_releases_its_place_and_lets_later_ones_in() -> None:
    budget = PixelBudget(10, wait_s=60.0)

    async def run() -> None:
        holder_done = asyncio.Event()

        async def holder() -> None:
            async with budget.hold(6):
                await holder_done.wait()

        holding = asyncio.create_task(holder())
        await asyncio.sleep(0)
        big = asyncio.create_task(_hold_for(budget, 10, 0, []))  # waits: 6 + 10 > 10
        await asyncio.sleep(0)
        small = asyncio.create_task(_hold_for(budget, 4, 0, []))  # queued behind big
        await asyncio.sleep(0)
        big.cancel()
        await asyncio.wait_for(small, timeout=5)  # fits beside the holder once big is gone
        holder_done.set()
        await holding
        with pytest.raises(asyncio.CancelledError):
            await big

    asyncio.run(run())
    assert budget.in_use == 0


def test_an_image_larger_than_the_budget_runs_alone() -> None:
    budget = PixelBudget(100, wait_s=60.0)

    async def run() -> None:
        async with budget.hold(10_000):
            assert budget.in_use == 100

    asyncio.run(run())
    assert budget.in_use == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        PixelBudget(0, wait_s=1.0)
