"""The one job loop (``Runtime.job``): more at once when a tick says so, woken early, a failed
tick retried at the next one, and a graceful end that finishes the tick in progress."""

from __future__ import annotations

import asyncio

import pytest

from workers.devstack import wait_for
from workers.runtime.errors import ShuttingDown
from workers.runtime.jobs import JobLoop


def loop_of(ticks: list[bool | Exception], every_s: float = 3600) -> tuple[JobLoop, list[str]]:
    """A loop whose ticks return (or raise) ``ticks`` in turn, then say "nothing more"."""
    seen: list[str] = []
    stopping = asyncio.Event()

    async def tick() -> bool:
        seen.append("tick")
        outcome = ticks.pop(0) if ticks else False
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close() -> None:
        seen.append("closed")

    return JobLoop("test.job", tick, every_s, stopping, close), seen


async def test_a_tick_that_says_more_is_due_is_followed_at_once_then_the_loop_waits() -> None:
    loop, seen = loop_of([True, True, False])
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(seen) >= 3, timeout_s=5)
    await asyncio.sleep(0.05)  # a wrong loop would tick again here instead of waiting an hour
    assert seen == ["tick"] * 3
    loop.stopping.set()
    loop.wake()
    await asyncio.wait_for(task, 5)
    assert seen == ["tick"] * 3 + ["closed"]


async def test_wake_runs_the_next_tick_now_rather_than_after_the_interval() -> None:
    loop, seen = loop_of([False, False])
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: seen == ["tick"], timeout_s=5)
    loop.wake()
    await wait_for(lambda: seen == ["tick", "tick"], timeout_s=5)
    loop.stopping.set()
    loop.wake()
    await asyncio.wait_for(task, 5)


async def test_a_failed_tick_is_retried_at_the_next_tick_not_at_once() -> None:
    loop, seen = loop_of([RuntimeError("claim query failed"), False], every_s=0.01)
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: len(seen) >= 2, timeout_s=5)
    loop.stopping.set()
    loop.wake()
    await asyncio.wait_for(task, 5)
    assert seen[:2] == ["tick", "tick"] and seen[-1] == "closed"


async def test_stopping_lets_the_tick_in_progress_finish_then_closes() -> None:
    release = asyncio.Event()
    seen: list[str] = []
    stopping = asyncio.Event()

    async def tick() -> bool:
        seen.append("started")
        await release.wait()
        seen.append("finished")
        return True  # "more is due": the loop must still end, since it is stopping

    async def close() -> None:
        seen.append("closed")

    loop = JobLoop("test.job", tick, 3600, stopping, close)
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: seen == ["started"], timeout_s=5)
    stopping.set()
    loop.wake()
    await asyncio.sleep(0.01)
    assert not task.done()
    release.set()
    await asyncio.wait_for(task, 5)
    assert seen == ["started", "finished", "closed"]


async def test_a_tick_that_gives_up_because_the_worker_stops_ends_the_loop() -> None:
    loop, seen = loop_of([ShuttingDown()])
    await asyncio.wait_for(loop.run(), 5)
    assert seen == ["tick", "closed"]


async def test_a_cancelled_loop_still_closes() -> None:
    loop, seen = loop_of([])
    task = asyncio.create_task(loop.run())
    await wait_for(lambda: seen == ["tick"], timeout_s=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["tick", "closed"]
