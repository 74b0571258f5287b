"""Pacer: even spacing, pauses that hold every sender, and budgets read from headers."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from tests.conftest import wait_for
from worker.errors import ShuttingDown
from worker.scx.pacing import MAX_RESERVE, Pacer, WindowBudget
from worker.scx.responses import RateLimit
from worker.scx.waits import Waits


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
    assert time.monotonic() - started < 1.0  # spaced at any real rate: minutes


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
    waits = Waits()
    pacer = Pacer(per_minute=6, waits=waits)  # a slot every 10 s
    await pacer.acquire()
    waiting = [asyncio.create_task(pacer.acquire()) for _ in range(3)]
    backoff = asyncio.create_task(waits.sleep(30))
    # The head of the line sleeps for its slot; the two behind it wait for their turn.
    await wait_for(lambda: waits.pending == 2, what="the head sender and the back-off to wait")
    started = time.monotonic()
    waits.interrupt()
    results = await asyncio.gather(*waiting, backoff, return_exceptions=True)
    assert all(isinstance(r, ShuttingDown) for r in results)
    assert time.monotonic() - started < 0.5
    with pytest.raises(ShuttingDown):
        await pacer.acquire()


# WindowBudget is pure: these tests drive it with explicit times.
LIMIT = 120


def test_alone_the_budget_spreads_what_is_left_over_the_time_left() -> None:
    budget = WindowBudget()
    seq = budget.sent()
    budget.observe(seq, RateLimit(LIMIT, LIMIT - 1, 60.0), sent_at=0.0, now=0.01)
    assert budget.window_end == pytest.approx(60.01)
    # 119 left for 60 s: about every 0.5 s, the last one half a second before it closes.
    assert budget.earliest(0.02, last_sent=0.0) == pytest.approx(60.01 / 120, rel=1e-3)


def test_calls_of_others_between_two_answers_are_held_in_reserve() -> None:
    budget = WindowBudget()
    first = budget.sent()
    budget.observe(first, RateLimit(LIMIT, 100, 60.0), sent_at=0.0, now=0.01)
    second = budget.sent()
    # 97 left after our one call: two other replicas took one each in between.
    budget.observe(second, RateLimit(LIMIT, 97, 60.0), sent_at=1.0, now=1.01)
    assert budget.reserve == 2
    assert budget.remaining == 97
    budget.remaining = 2  # two left, both likely taken by the others before our next call
    assert budget.earliest(2.0, last_sent=1.0) == budget.window_end


def test_the_reserve_is_capped() -> None:
    budget = WindowBudget()
    budget.observe(budget.sent(), RateLimit(LIMIT, 110, 60.0), sent_at=0.0, now=0.0)
    budget.observe(budget.sent(), RateLimit(LIMIT, 10, 60.0), sent_at=1.0, now=1.0)
    assert budget.reserve == MAX_RESERVE


def test_our_own_calls_in_flight_count_against_what_is_left() -> None:
    budget = WindowBudget()
    first = budget.sent()
    for _ in range(3):
        budget.sent()  # sent after `first`, not yet answered
    budget.observe(first, RateLimit(LIMIT, 50, 60.0), sent_at=0.0, now=0.1)
    assert budget.remaining == 47
    assert budget.reserve == 0


def test_a_remainder_that_goes_up_starts_a_new_window() -> None:
    budget = WindowBudget()
    budget.observe(budget.sent(), RateLimit(LIMIT, 3, 60.0), sent_at=0.0, now=0.0)
    assert budget.window_end == 60.0
    budget.observe(budget.sent(), RateLimit(LIMIT, 90, 60.0), sent_at=30.0, now=30.5)
    assert budget.window_end == pytest.approx(90.5)  # late rather than early: never a 429


def test_an_overtaken_answer_is_ignored() -> None:
    budget = WindowBudget()
    first, second = budget.sent(), budget.sent()
    budget.observe(second, RateLimit(LIMIT, 80, 60.0), sent_at=0.1, now=0.2)
    budget.observe(first, RateLimit(LIMIT, 81, 60.0), sent_at=0.0, now=0.3)
    assert budget.remaining == 80


def test_nothing_left_means_waiting_for_the_window_to_end_and_no_longer() -> None:
    budget = WindowBudget()
    budget.observe(budget.sent(), RateLimit(LIMIT, 0, 60.0), sent_at=0.0, now=0.0)
    assert budget.earliest(10.0, last_sent=0.0) == 60.0
    assert budget.earliest(61.0, last_sent=0.0) == 61.0


async def test_the_pacer_waits_for_the_next_window_when_the_headers_say_none_are_left() -> None:
    pacer = Pacer(per_minute=6000)
    seq = await pacer.acquire()
    pacer.observe(seq, RateLimit(10, 0, 0.3), sent_at=time.monotonic())
    started = time.monotonic()
    await pacer.acquire()
    assert time.monotonic() - started >= 0.25
