"""Pacer: sends are spaced on an even grid, and a pause holds every sender."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.conftest import wait_for
from worker.errors import ShuttingDown
from worker.pacing import Pacer


async def stamps(pacer: Pacer, n: int) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await pacer.acquire()
        times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(n)))
    return sorted(times)


async def test_concurrent_sends_are_spaced_by_the_interval() -> None:
    pacer = Pacer(per_minute=1200)  # one slot every 50 ms
    times = await stamps(pacer, 6)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.045
    assert times[-1] - times[0] >= 0.245


async def test_zero_turns_spacing_off() -> None:
    pacer = Pacer(per_minute=0)
    started = time.monotonic()
    await stamps(pacer, 100)
    assert time.monotonic() - started < 0.1


async def test_a_pause_holds_senders_that_already_hold_a_slot() -> None:
    pacer = Pacer(per_minute=0)
    pacer.pause_for(0.2)
    started = time.monotonic()
    times = await stamps(pacer, 3)
    assert min(times) - started >= 0.19


async def test_pause_announced_while_waiting_is_respected() -> None:
    pacer = Pacer(per_minute=600)  # 100 ms apart
    await pacer.acquire()
    waiter = asyncio.create_task(pacer.acquire())  # holds the slot at +100 ms
    await asyncio.sleep(0)  # sync-ok: let the waiter take its slot
    started = time.monotonic()
    pacer.pause_for(0.3)
    await waiter
    assert time.monotonic() - started >= 0.29


async def test_earlier_pause_does_not_shorten_a_later_one() -> None:
    pacer = Pacer(per_minute=0)
    pacer.pause_for(0.3)
    pacer.pause_for(0.1)
    started = time.monotonic()
    await pacer.acquire()
    assert time.monotonic() - started >= 0.29


async def test_interrupt_ends_every_wait_with_shutting_down() -> None:
    pacer = Pacer(per_minute=6)  # a slot every 10 s
    await pacer.acquire()
    waiting = [asyncio.create_task(pacer.acquire()) for _ in range(3)]
    backoff = asyncio.create_task(pacer.sleep(30))
    await wait_for(lambda: len(pacer._sleepers) == 4, what="four waits to start")
    started = time.monotonic()
    pacer.interrupt()
    results = await asyncio.gather(*waiting, backoff, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)
    assert time.monotonic() - started < 0.5
    with pytest.raises(ShuttingDown):
        await pacer.acquire()
