"""The events bridge while the broker is away: attempts 0.5 s to 5 s apart, not a busy loop.

The bridge runs in this process (so its log lines and its CPU time can be counted) against
the emulator and the real broker, reached through a TCP proxy that the test cuts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.support.broker import Names
from tests.support.endpoints import REFRESH_TOKEN
from tests.support.polling import wait_for
from tests.support.proxy import TcpProxy
from tests.support.settings import make_settings
from worker.emulator import Emulator
from worker.emulator.events import seller_event
from worker.events.bridge import RECONNECT_DELAYS, Bridge
from worker.scx import ScxClient

OUTAGE = 4.0  # seconds


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    tcp = TcpProxy()
    await tcp.start()
    yield tcp
    await tcp.close()


async def test_reconnect_attempts_are_spaced_while_the_broker_is_away(
    emulator: Emulator, names: Names, proxy: TcpProxy
) -> None:
    settings = make_settings(
        names,
        emulator,
        amqp_url=proxy.url,
        events_unrouted_queue=f"{names.queue}.unrouted",
        events_lock_name=f"{names.queue}.lock",
        events_poll_interval=0.2,
    )
    async with ScxClient(settings, SecretStr(REFRESH_TOKEN), background=True) as client:
        bridge = Bridge(settings, client)
        with capture_logs() as logs:
            task = asyncio.ensure_future(bridge.run())
            try:
                await wait_for(lambda: bridge.active, what="the bridge to poll")
                await proxy.cut()
                cpu, wall = time.process_time(), time.monotonic()
                await asyncio.sleep(OUTAGE)  # sync-ok: the fault itself, the broker is gone
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                attempts = sum(1 for e in logs if e["event"] == "events.broker_unreachable")
                await proxy.restore()
                emulator.add_events([seller_event("after-outage", "System:Test", {})])
                await wait_for(
                    lambda: emulator.events.ledger.acked_counts["after-outage"] == 1,
                    timeout=30,
                    what="the event after the outage acknowledged",
                )
            finally:
                bridge.stop()
                await asyncio.wait_for(task, 30)
    # 0.5 + 1 + 2 s of pauses fit in 4 s: about 3 to 4 attempts, never thousands.
    most = 1 + int(OUTAGE / RECONNECT_DELAYS[0])
    assert 1 <= attempts <= most, f"{attempts} connection attempts in {OUTAGE} s"
    delays = [e["retry_in_s"] for e in logs if e["event"] == "events.broker_unreachable"]
    assert delays[: len(RECONNECT_DELAYS)] == list(RECONNECT_DELAYS)[: len(delays)]
    # The whole process (the emulator included) idles while the bridge waits.
    assert cpu < 0.25 * wall, f"{cpu:.2f} s of CPU in {wall:.1f} s of outage"
