"""The API misbehaves for a while: down, rate-limiting, short-lived tokens, a shared limit."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from tests.reliability.harness import (
    FAST_RETRIES,
    DeadLetters,
    MakeFleet,
    Record,
    finish,
    make_backlog,
    publish_backlog,
    seconds,
    share,
    wait_until,
)
from tests.support.broker import Names
from worker.emulator import Emulator

BACKLOG = 2000


@pytest.mark.timeout(400)
async def test_api_outage_of_30_s(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """API outage (every call 503) for 30 s in the middle of a backlog."""
    outage_s, max_requests = 30.0, 50
    fleet = make_fleet(
        WORKER_CONCURRENCY="8",
        AMQP_PREFETCH="16",
        SCX_BREAKER_FAILURES="5",
        SCX_RETRY_BUDGET="5",
        **FAST_RETRIES,
    )
    backlog = make_backlog(BACKLOG, seed=21)
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    await fleet.start()
    counts = emulator.state.accepted_counts
    third = len(backlog.valid) // 3
    await wait_until(lambda: len(counts) >= third, timeout=120, fleet=fleet, what="a third")

    emulator.configure(outage=True)
    await asyncio.sleep(outage_s)  # the fault itself: the API stays down this long
    emulator.configure(outage=False)
    outage = emulator.outage
    assert outage is not None
    requests = outage.ticket_calls + outage.auth_calls
    record.figures.update(outage_s=outage_s, requests_during_outage=requests)
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=240, fleet=fleet
    )
    record.figures["recovery_s"] = seconds(outage.recovered_after)
    record.bounds = {
        "lost": "= 0",
        "dead-lettered": "valid ones: 0",
        "requests during outage": f"≤ {max_requests} (circuit breaker)",
        "recovery": f"≤ {outage_s:g} s",
    }
    books.check(max_duplicates=0, fleet=fleet)
    assert requests <= max_requests, f"{requests} calls reached the API while it was down"
    assert outage.recovered_after is not None
    assert outage.recovered_after <= outage_s, f"recovered after {outage.recovered_after} s"


@pytest.mark.timeout(300)
async def test_429_storm_with_retry_after(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """429 storm: every call 429 with Retry-After: 2 for 10 s in the middle of a backlog."""
    storm_s, retry_after, concurrency = 10.0, 2.0, 16
    fleet = make_fleet(WORKER_CONCURRENCY=str(concurrency), **FAST_RETRIES)
    backlog = make_backlog(BACKLOG, seed=22)
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    await fleet.start()
    counts = emulator.state.accepted_counts
    third = len(backlog.valid) // 3
    await wait_until(lambda: len(counts) >= third, timeout=120, fleet=fleet, what="a third")

    emulator.configure(outage=True, outage_status=429, retry_after=retry_after)
    await asyncio.sleep(storm_s)  # the fault itself
    emulator.configure(outage=False, retry_after=None)
    storm = emulator.outage
    assert storm is not None
    limited = storm.statuses[429]
    record.figures.update(
        storm_s=storm_s,
        requests_during_outage=storm.ticket_calls + storm.auth_calls,
        responses_429_in_storm=limited,
    )
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=240, fleet=fleet
    )
    record.figures["recovery_s"] = seconds(storm.recovered_after)
    # A worker that honours Retry-After sends at most one round of its concurrency per wait.
    max_limited = concurrency * (math.ceil(storm_s / retry_after) + 2)
    max_recovery = retry_after + 8
    record.bounds = {
        "lost": "= 0",
        "dead-lettered": "valid ones: 0",
        "429 answers": f"≤ {max_limited} (WORKER_CONCURRENCY x (storm / Retry-After + 2))",
        "recovery": f"≤ {max_recovery:g} s after the storm",
    }
    books.check(max_duplicates=0, fleet=fleet)
    assert limited <= max_limited, f"{limited} answers 429 during the storm"
    assert storm.recovered_after is not None
    assert storm.recovered_after <= max_recovery, f"recovered after {storm.recovered_after} s"


@pytest.mark.timeout(400)
async def test_token_lifetime_of_2_s_over_a_minute(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """Token lifetime 2 s over a paced run of about 50 s (SCX_MAX_REQUESTS_PER_MINUTE=2400)."""
    lifetime, margin = 2.0, 2.0 / 5  # SCX_TOKEN_REFRESH_MARGIN is capped at a fifth
    emulator.configure(token_lifetime=lifetime)
    fleet = make_fleet(SCX_MAX_REQUESTS_PER_MINUTE="2400", **FAST_RETRIES)
    backlog = make_backlog(BACKLOG, seed=23)
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    await fleet.start()
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=240, fleet=fleet
    )
    state = emulator.state
    assert state.first_accepted_at is not None
    assert state.last_accepted_at is not None
    span = state.last_accepted_at - state.first_accepted_at
    low = math.floor(span / lifetime)  # no token outlives its 2 s
    high = math.ceil(span / (lifetime - margin) * 1.25) + 2  # one refresh per lifetime - margin
    retried_401 = fleet.count("scx.retry", status=401)
    max_401 = max(3, state.auth_calls // 4)
    record.figures.update(
        run_s=round(span, 1),
        auth_failures=state.auth_failures,
        unauthorized=state.unauthorized,
        retries_on_401=retried_401,
    )
    record.bounds = {
        "lost": "= 0",
        "auth calls": f"{low}..{high} (run / lifetime .. run / (lifetime - margin) x 1.25 + 2)",
        "failed auth calls": "= 0",
        # A request that leaves with a token just before its refresh point may arrive after
        # the token lapsed on a busy machine; TokenAuth refreshes and resends it at once.
        "401 answers": f"≤ {max_401} (a quarter of the tokens), none retried by the worker",
    }
    books.check(max_duplicates=0, fleet=fleet)
    assert span >= 40, "the run is paced to about 50 s"
    assert low <= state.auth_calls <= high, f"{state.auth_calls} auth calls"
    assert state.auth_failures == 0, f"{state.auth_failures} auth calls failed"
    assert state.unauthorized <= max_401, f"{state.unauthorized} answers 401"
    assert retried_401 == 0, f"{retried_401} retries after a 401"


@pytest.mark.timeout(400)
async def test_rate_limit_shared_by_three_workers(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """Limit of 120 per minute shared by 3 workers (time scaled: 120 per 6 s window)."""
    limit, interval, measured = 120, 6.0, 10
    emulator.configure(rate_limit=limit, rate_interval=interval)
    # Each replica is configured with the whole credential's limit, per minute.
    per_minute = limit * 60 / interval
    fleet = make_fleet(SCX_MAX_REQUESTS_PER_MINUTE=f"{per_minute:g}", **FAST_RETRIES)
    backlog = make_backlog(BACKLOG, seed=24)
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    await asyncio.gather(*(fleet.start() for _ in range(3)))
    windows = emulator.state.rate_windows
    # The first window is the warm-up; the next `measured` ones count; one more has begun.
    await wait_until(
        lambda: len(windows) >= measured + 2,
        timeout=(measured + 4) * interval * 2,
        fleet=fleet,
        what=f"{measured + 2} rate windows",
    )
    emulator.configure(rate_limit=None)  # lifted: the rest drains at full speed
    span = windows[measured + 1].started_at - windows[1].started_at
    sample = windows[1 : measured + 1]
    accepted = sum(w.accepted for w in sample)
    requests = sum(w.requests for w in sample)
    limited = sum(w.limited for w in sample)
    goodput = accepted / (span * limit / interval)
    record.figures.update(
        windows_measured=measured,
        accepted_in_windows=accepted,
        goodput_of_limit=round(goodput, 3),
        share_429_in_windows=share(limited, requests),
        responses_429_in_windows=limited,
    )
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=240, fleet=fleet
    )
    record.bounds = {
        "lost": "= 0",
        "goodput": "≥ 95 % of the limit over 10 windows",
        "429 share": "≤ 2 % of the requests in those windows",
    }
    books.check(max_duplicates=0, fleet=fleet)
    assert goodput >= 0.95, f"goodput {goodput:.1%} of the limit"
    assert limited <= 0.02 * requests, f"{limited} of {requests} requests answered 429"
