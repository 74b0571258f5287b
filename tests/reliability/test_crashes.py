"""The worker or the broker goes away in the middle of a backlog: nothing may be lost."""

from __future__ import annotations

import signal
import time

import pytest
from yarl import URL

from tests.reliability.harness import (
    FAST_RETRIES,
    DeadLetters,
    MakeFleet,
    Record,
    finish,
    make_backlog,
    publish_backlog,
    seconds,
    wait_until,
)
from tests.support.broker import Names
from tests.support.endpoints import AMQP_URL
from tests.support.proxy import TcpProxy
from worker.emulator import Emulator

BACKLOG = 2000


@pytest.mark.timeout(300)
async def test_worker_sigkilled_mid_backlog(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """Worker SIGKILLed after a third of the backlog, then restarted."""
    prefetch = 32
    emulator.configure(latency=0.02)  # requests in flight when the kill lands
    fleet = make_fleet(AMQP_PREFETCH=str(prefetch), WORKER_CONCURRENCY="16", **FAST_RETRIES)
    backlog = make_backlog(BACKLOG, seed=11)
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    victim = await fleet.start()
    third = len(backlog.valid) // 3
    counts = emulator.state.accepted_counts
    await wait_until(lambda: len(counts) >= third, timeout=120, fleet=fleet, what="a third")

    victim.process.kill()
    assert await victim.wait() == -signal.SIGKILL
    record.figures["accepted_at_kill"] = len(counts)
    await fleet.start()
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=180, fleet=fleet
    )
    record.bounds = {
        "lost": "= 0",
        "duplicated": f"≤ {prefetch} (AMQP_PREFETCH of the killed worker)",
    }
    books.check(max_duplicates=prefetch, fleet=fleet)


@pytest.mark.timeout(300)
async def test_sigterm_at_100ms_latency_finishes_in_flight_work(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """SIGTERM during a backlog at 100 ms API latency; a second worker drains the rest."""
    grace = 10.0
    emulator.configure(latency=0.1)
    fleet = make_fleet(**FAST_RETRIES | {"WORKER_SHUTDOWN_GRACE": f"{grace:g}"})
    backlog = make_backlog(BACKLOG, seed=12)
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    first = await fleet.start()
    counts = emulator.state.accepted_counts
    third = len(backlog.valid) // 3
    await wait_until(lambda: len(counts) >= third, timeout=120, fleet=fleet, what="a third")

    signalled = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    code = await first.wait(timeout=grace + 30)
    exit_s = time.monotonic() - signalled
    state = emulator.state
    # Every request that reached the API was answered and counted: none was abandoned.
    abandoned = state.ticket_calls - state.accepted_total
    record.figures.update(exit_code=code, exit_s=seconds(exit_s), abandoned_calls=abandoned)
    assert code == 0, fleet.tail()
    assert exit_s <= grace, f"took {exit_s:.1f} s, WORKER_SHUTDOWN_GRACE is {grace:g} s"
    assert abandoned == 0, f"{abandoned} calls abandoned in flight"

    emulator.configure(latency=0.0)
    await fleet.start()
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=180, fleet=fleet
    )
    record.bounds = {
        "exit": f"code 0 within WORKER_SHUTDOWN_GRACE = {grace:g} s",
        "lost": "= 0",
        "duplicated": "= 0 (every accepted count exactly 1)",
    }
    books.check(max_duplicates=0, fleet=fleet)
    assert set(state.accepted_counts.values()) == {1}, "a ticket was sent twice"


@pytest.mark.timeout(400)
async def test_connection_lost_with_acks_in_transit(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """Connection lost behind a link that holds 0.5 s of acks; the worker moves to a second URL.

    The worst case for duplicates: every delivery the broker counts as unacked was already
    sent to the API (its ack still on the way), so a lost connection returns AMQP_PREFETCH
    messages that all go out again. It is the bound, and this measures how close it gets.
    """
    prefetch, concurrency = 64, 32
    upstream = URL(AMQP_URL)
    slow = await TcpProxy(upstream.host or "", upstream.port or 5672, delay_up=0.5).start()
    spare = await TcpProxy(upstream.host or "", upstream.port or 5672).start()
    try:
        fleet = make_fleet(
            AMQP_URL=f"{slow.url},{spare.url}",
            AMQP_PREFETCH=str(prefetch),
            WORKER_CONCURRENCY=str(concurrency),
            **FAST_RETRIES,
        )
        backlog = make_backlog(BACKLOG, seed=14)
        await publish_backlog(fleet.env | {"AMQP_URL": AMQP_URL}, backlog)
        started = time.monotonic()
        worker = await fleet.start()
        counts = emulator.state.accepted_counts
        third = len(backlog.valid) // 3
        await wait_until(lambda: len(counts) >= third, timeout=120, fleet=fleet, what="a third")

        await slow.cut()
        lost = time.monotonic()
        before = emulator.state.accepted_total
        await wait_until(
            lambda: emulator.state.accepted_total > before + prefetch,
            timeout=60,
            fleet=fleet,
            what="forwarding through the second URL",
        )
        record.figures["recovery_s"] = seconds(time.monotonic() - lost)
        books = await finish(
            record.figures,
            backlog,
            emulator,
            dead,
            broker,
            started=started,
            timeout=240,
            fleet=fleet,
        )
    finally:
        await slow.close()
        await spare.close()
    record.bounds = {
        "lost": "= 0",
        "duplicated": f"≤ {prefetch} (AMQP_PREFETCH: every unacked delivery of the lost "
        "connection, acks in transit included)",
        "worker": "the same process moves to the second URL",
    }
    assert fleet.alive() == [worker], fleet.tail()
    books.check(max_duplicates=prefetch, fleet=fleet)
