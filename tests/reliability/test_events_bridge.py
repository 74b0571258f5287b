"""The events bridge SIGKILLed at random points over a backlog of seller events.

``make test`` runs the short form (300 events, 2 kills); ``make reliability`` the long one
(``RELIABILITY_EVENTS=2000``, 5 kills). Reconciled against the emulator's ledger and every
message the broker got: every event published at least once and acknowledged, duplicates
only as byte-identical copies with the same ``message_id``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from functools import partial
from typing import Any

import pytest

from tests.reliability.harness import Record
from tests.support.bridge import bridge_env, check_published, make_backlog, start_bridge
from tests.support.broker import Names
from tests.support.polling import wait_for
from tests.support.processes import Process
from worker.emulator import Emulator
from worker.emulator.events import EventLedger

EVENTS = int(os.environ.get("RELIABILITY_EVENTS", "300"))
KILLS = 2 if EVENTS <= 300 else 5


@pytest.mark.timeout(600)
async def test_events_bridge_sigkilled_at_random_points(
    broker: Names,
    emulator: Emulator,
    taps: Any,
    processes: list[Process],
    record: Record,
) -> None:
    """Events bridge SIGKILLed at random points of a backlog of seller events, restarted."""
    tap = await taps("all", "#")
    visibility = 2.0
    emulator.configure(latency=0.005, event_visibility=visibility)
    backlog = make_backlog(EVENTS, seed=31, prefix="k")
    emulator.add_events(backlog.items, backlog.files)
    env = bridge_env(broker, emulator, EVENTS_BATCH_SIZE="25")
    ledger = emulator.events.ledger
    rng = random.Random(7)
    points = sorted(rng.sample(range(EVENTS // 10, EVENTS * 8 // 10), KILLS))
    started = time.monotonic()
    for point in points:
        bridge = await start_bridge(env, processes)
        await wait_for(partial(_reached, ledger, point), timeout=120, what=f"{point} acked")
        # The kill lands anywhere in the next batch: download, publish, confirm or ack (a
        # random moment of the fault, not a synchronisation).
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        bridge.process.kill()
        assert await bridge.wait() == -signal.SIGKILL
    await start_bridge(env, processes)
    await wait_for(
        lambda: emulator.events.pending == 0, timeout=300, what="every event acknowledged"
    )
    duration = time.monotonic() - started
    await tap.until_all(set(backlog.expected))
    duplicates = check_published(tap, backlog, exactly_once=False)
    record.figures.update(
        published=EVENTS,
        messages=len(backlog.expected),
        kills=KILLS,
        lost=0,
        duplicated=duplicates,
        redelivered_events=ledger.redelivered,
        acked_again=ledger.acked_again,
        poll_calls=ledger.polls,
        ack_calls=ledger.ack_calls,
        duration_s=round(duration, 1),
    )
    record.bounds = {
        "lost": "= 0 (every event published and acknowledged)",
        "duplicates": "only byte-identical copies with the same message_id",
    }


def _reached(ledger: EventLedger, acked: int) -> bool:
    return ledger.acked_total >= acked
