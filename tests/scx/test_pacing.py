"""Pacer: even spacing, pauses, budgets read from headers, and how the API counts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import orjson
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.support.endpoints import REFRESH_TOKEN
from tests.support.examples import SEED_TICKET
from tests.support.pacing_sim import simulate
from tests.support.polling import wait_for
from worker.core.errors import RetryLater, ShuttingDown
from worker.core.settings import Settings
from worker.emulator import Emulator
from worker.emulator.limits import Algorithm
from worker.scx import ScxClient
from worker.scx.pacing import MAX_RESERVE, Pacer, Schedule, WindowBudget
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


def test_a_background_caller_leaves_the_last_calls_of_a_window_to_the_busy_ones() -> None:
    def polled_twice(background: bool) -> WindowBudget:
        budget = WindowBudget(background=background)
        budget.observe(budget.sent(), RateLimit(60, 59, 30.0), sent_at=0.0, now=0.0)
        # Ten seconds later the others had taken 41 (4.1 a second): 17 left.
        budget.observe(budget.sent(), RateLimit(60, 17, 30.0), sent_at=10.0, now=10.0)
        return budget

    busy, seldom = polled_twice(background=False), polled_twice(background=True)
    # Ten seconds on, at that pace the others have likely used the 17 up: the background
    # caller waits for the next window; a busy caller, about to hear more, goes on.
    assert seldom.earliest(20.0, last_sent=10.0) == seldom.window_end
    assert busy.earliest(20.0, last_sent=10.0) == 20.0
    # Soon after its answer, the background caller still has its share.
    assert seldom.earliest(10.5, last_sent=10.0) < seldom.window_end


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


# Schedule is pure too: how the answers tell the pacer the way the API counts.
def answer(schedule: Schedule, remaining: int, *, at: float, limit: int = 10) -> None:
    """Send one call at ``at`` and take in its answer a millisecond later."""
    seq = schedule.sent(at)
    schedule.observe(seq, RateLimit(limit, remaining, 10.0), sent_at=at, now=at + 0.001)


def allowed_at(schedule: Schedule, now: float) -> float:
    """The time the pacer's loop lets the next call go (it looks again when told to)."""
    while (slot := schedule.next_slot(now)) > now:
        now = slot
    return now


def test_windows_are_assumed_until_the_answers_show_otherwise() -> None:
    schedule = Schedule(per_minute=6000)
    for k in range(10):
        answer(schedule, 9 - k, at=float(k))
    assert schedule.counting == "fixed"
    answer(schedule, 9, at=10.5)  # a reset to the whole limit an interval later: windows
    assert schedule.counting == "fixed"


def test_remaining_that_comes_back_without_a_reset_is_a_sliding_window() -> None:
    schedule = Schedule(per_minute=6000)
    for k in range(10):
        answer(schedule, 9 - k, at=float(k))
    answer(schedule, 0, at=10.2)  # our call of 0.0 left the count and this one took its place
    assert schedule.counting == "sliding"
    # An interval after the answer to our call of 1.0 (a millisecond later), not at a window end.
    assert allowed_at(schedule, 10.3) == pytest.approx(1.001 + 10.0, abs=0.002)


def test_tokens_that_come_back_within_an_interval_are_a_bucket() -> None:
    schedule = Schedule(per_minute=6000)
    for k in range(5):
        answer(schedule, 9, at=float(k))  # each call's token is back before the next one
    assert schedule.counting == "bucket"


def test_a_429_on_a_slot_we_held_means_saved_up_tokens_ran_out() -> None:
    schedule = Schedule(per_minute=6000)
    for k in range(10):
        answer(schedule, 9 - k, at=float(k))
    answer(schedule, 0, at=10.2)
    seq = schedule.sent(11.1)
    schedule.observe(seq, RateLimit(10, 0, 10.0), sent_at=11.1, now=11.101, refused=True)
    assert schedule.counting == "bucket"


def test_under_a_sliding_window_we_keep_to_our_calls_and_leave_the_others_theirs() -> None:
    schedule = Schedule(per_minute=6000)
    # Every answer of the first interval: the others hold as many calls as we do.
    for k in range(5):
        answer(schedule, 10 - 2 * (k + 1), at=2.0 * k)
    answer(schedule, 0, at=10.05)  # ours of 0.0 left; the count stayed full
    assert schedule.counting == "sliding"
    # We held 5 of the 10: the next slot is when our call of 2.0 leaves, not before.
    assert allowed_at(schedule, 10.1) == pytest.approx(2.001 + 10.0, abs=0.002)


# Rule 4: beside other callers, a pause taken together tells a shared bucket from a window.
def beside_others(schedule: Schedule) -> None:
    """Four answers of our first interval (20 per 10 s) while others call too: half the
    limit is gone at the fourth, 7 of its 11 calls the others'."""
    for k, remaining in enumerate((18, 15, 12, 9)):
        answer(schedule, remaining, at=float(k), limit=20)


def test_beside_others_a_caller_pauses_when_half_the_limit_is_gone() -> None:
    schedule = Schedule(per_minute=6000)
    beside_others(schedule)
    assert allowed_at(schedule, 3.01) == pytest.approx(3.001 + 3.0)


def test_alone_as_far_as_it_can_tell_a_caller_pauses_two_calls_worth() -> None:
    schedule = Schedule(per_minute=6000)
    for k in range(10):
        answer(schedule, 19 - k, at=0.25 * k, limit=20)  # only our own calls counted
    # Two replicas sharing a bucket look like this too: 2 of 20 per 10 s is 1 s.
    assert allowed_at(schedule, 2.26) == pytest.approx(2.251 + 1.0)


def test_capacity_back_after_the_pause_is_a_bucket_and_leaves_it_to_the_others() -> None:
    schedule = Schedule(per_minute=6000)
    beside_others(schedule)
    answer(schedule, 11, at=6.001, limit=20)  # 9 left, ours took one: 3 came back
    assert schedule.counting == "bucket"
    # Held back a tenth of the interval, so the others still looking see the refill too.
    assert allowed_at(schedule, 6.01) >= 6.002 + 1.0


def test_nothing_back_after_the_pause_keeps_the_windows_and_the_pace() -> None:
    schedule = Schedule(per_minute=6000)
    beside_others(schedule)
    answer(schedule, 8, at=6.001, limit=20)
    assert schedule.counting == "fixed"
    assert allowed_at(schedule, 6.01) < 6.01 + 1.0  # the window's rest, spread over its time


def test_a_little_back_after_the_pause_is_looked_at_once_more() -> None:
    schedule = Schedule(per_minute=6000)
    beside_others(schedule)
    # One came back: as many as a call counted before our first could give by aging out.
    answer(schedule, 9, at=6.001, limit=20)
    after_one_look = schedule.counting
    assert allowed_at(schedule, 6.01) >= 6.002 + 1.0
    answer(schedule, 11, at=7.003, limit=20)  # three more while nobody called: refill
    assert (after_one_look, schedule.counting) == ("sliding", "bucket")


# The simulation: many replicas, each limit algorithm, no coordinator (tests/support/pacing_sim.py).
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
@pytest.mark.parametrize(("limit", "interval"), [(20, 10.0), (60, 30.0)])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_replicas_reach_the_limit_under_every_algorithm(
    algorithm: Algorithm, limit: int, interval: float, replicas: int
) -> None:
    for seed in range(3):
        outcome = simulate(algorithm, limit, interval, replicas, seconds=6 * interval, seed=seed)
        assert outcome.goodput >= 0.97, (seed, outcome)
        if algorithm == "bucket" and replicas > 3 and limit < 60:
            # 20 calls: the pause refills too little to be sure for every replica, which
            # then learns from a 429 (worker/scx/pacing.py, rule 4).
            assert outcome.limited <= replicas, (seed, outcome)
        else:
            assert outcome.share_429 <= 0.01, (seed, outcome)


# Beside the workers, the events bridge polls an empty feed every 10 s on the same credential.
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
@pytest.mark.parametrize(("limit", "interval"), [(20, 10.0), (60, 30.0)])
@pytest.mark.parametrize("replicas", [1, 3])
def test_a_polling_bridge_beside_replicas_costs_no_429s(
    algorithm: Algorithm, limit: int, interval: float, replicas: int
) -> None:
    for seed in range(3):
        outcome = simulate(
            algorithm, limit, interval, replicas, seconds=6 * interval, seed=seed, pollers=1
        )
        assert outcome.limited == 0, (seed, outcome)
        assert outcome.goodput >= (0.97 if replicas > 1 else 0.95), (seed, outcome)


# The production limit, 60 per 60 s, with replicas started up to 2 s apart.
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
@pytest.mark.parametrize("replicas", [3, 6])
def test_replicas_started_apart_share_the_production_limit(
    algorithm: Algorithm, replicas: int
) -> None:
    for seed in range(3):
        outcome = simulate(
            algorithm, 60, 60.0, replicas, seconds=360.0, seed=seed, start_spread=2.0
        )
        assert outcome.share_429 <= 0.01, (seed, outcome)
        assert outcome.goodput >= 0.96, (seed, outcome)


# The bridge leaves a fixed window's last calls to the busy workers: a poll waits for the
# next window at most, so seller events are at most an interval late
# (docs/guides/scx-client.md, "Pacing").
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
@pytest.mark.parametrize(("limit", "interval"), [(20, 10.0), (60, 30.0), (60, 60.0)])
def test_beside_busy_workers_the_bridge_polls_at_most_an_interval_late(
    algorithm: Algorithm, limit: int, interval: float
) -> None:
    for seed in range(3):
        outcome = simulate(
            algorithm, limit, interval, 3, seconds=6 * interval, seed=seed, pollers=1
        )
        assert outcome.longest_poll_gap >= 10.0, (seed, outcome)  # it did poll again
        assert outcome.longest_poll_gap <= 10.0 + interval + 1.0, (seed, outcome)


# deploy/k8s: two workers and the events bridge, at the production limit.
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
def test_the_deployed_two_workers_and_the_bridge_share_the_production_limit(
    algorithm: Algorithm,
) -> None:
    for seed in range(3):
        outcome = simulate(algorithm, 60, 60.0, 2, seconds=360.0, seed=seed, pollers=1)
        assert outcome.limited == 0, (seed, outcome)
        assert outcome.goodput >= 0.97, (seed, outcome)


def test_eight_replicas_share_a_sliding_window_of_sixty() -> None:
    outcome = simulate("sliding", 60, 30.0, 8, seconds=180.0)
    assert outcome.goodput >= 0.97
    assert outcome.share_429 <= 0.01


# In-process, over real HTTP: separate clients (each with its own pacer, as separate
# processes have) sharing one credential on the emulator, a few intervals of 20 per 2 s.
@pytest.mark.parametrize("algorithm", ["fixed", "sliding", "bucket"])
@pytest.mark.parametrize("clients", [1, 3])
async def test_clients_sharing_a_credential_use_the_limit_without_429s(
    emulator: Emulator, algorithm: Algorithm, clients: int
) -> None:
    limit, interval, intervals = 20, 2.0, 4
    emulator.configure(rate_limit=limit, rate_interval=interval, rate_algorithm=algorithm)
    settings = Settings(
        scx_api_url=emulator.base_url,
        scx_refresh_token=REFRESH_TOKEN,
        scx_max_requests_per_minute=limit * 60 / interval,
        scx_retry_attempts=1,
    )
    body = orjson.dumps(SEED_TICKET)
    scx = [ScxClient(settings, SecretStr(REFRESH_TOKEN)) for _ in range(clients)]

    async def forward(client: ScxClient) -> None:
        while True:
            with contextlib.suppress(RetryLater):
                await client.send_ticket(body)

    senders = [asyncio.create_task(forward(client)) for client in scx for _ in range(4)]
    try:
        await wait_for(lambda: emulator.state.ticket_calls > 0, what="a first ticket call")
        started = emulator.clock()
        await wait_for(
            lambda: emulator.clock() - started >= intervals * interval,
            timeout=60,
            what="the measured intervals",
        )
        state = emulator.state
        accepted, limited = state.statuses[201], state.statuses[429]
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        for client in scx:
            await client.aclose()
    # Generous bounds for a loaded machine: `make bench` measures the real figures.
    assert accepted >= 0.85 * limit * intervals
    assert limited <= clients - 1 if algorithm == "bucket" else limited == 0


def test_the_pacer_logs_once_when_it_learns_how_the_api_counts() -> None:
    now = [0.0]
    pacer = Pacer(per_minute=6000, clock=lambda: now[0])
    with capture_logs() as logs:
        for k in range(12):
            now[0] = float(k)
            pacer.observe(k + 1, RateLimit(10, max(0, 9 - k), 10.0), sent_at=now[0] - 0.001)
    assert pacer.counting == "sliding"
    learned = [e for e in logs if e["event"] == "scx.rate_limit_counting"]
    assert learned == [
        {
            "event": "scx.rate_limit_counting",
            "counting": "sliding",
            "was": "fixed",
            "category": "channel",
            "log_level": "info",
        }
    ]
