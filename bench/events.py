"""The events bridge draining a backlog of seller events under the API's rate limit.

The project's emulator (``--rate-limit L --rate-interval I``: a fixed window opened by the
first call after the last one ran out) holds N queued seller events of the usual types (no
replies: those add one download call per file). One ``scx-forwarder events`` process with
``EVENTS_BATCH_SIZE`` B and ``SCX_MAX_REQUESTS_PER_MINUTE`` = L * 60 / I drains them into a
queue bound to its exchange.

Measured from the emulator (``GET /_emulator/state``, sampled every 50 ms): the drain time
from the first ``/v1/channel/event`` call to the moment the last event is acknowledged, and
the calls made until then. The calls the backlog needs are N / B polls and N / 100
acknowledgements (``DELETE`` takes 100 ids); what the limit allows for C calls is
C * I / L seconds. The bound of the issue: drain time <= 1.1 x that.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
import uuid
from dataclasses import dataclass

import aio_pika

from bench.contenders import WORKER
from bench.measure import Session
from bench.pacing import Emulator
from worker.core.settings import Settings

EVENT_TYPES = (
    "Seller:Order.Shipping",
    "Seller:Order.Payment",
    "Seller:Offer.PriceUpdate",
    "Seller:Order.Confirmed",
    "System:Notification",
)
ACK_IDS = 100
INJECT_CHUNK = 2000


@dataclass
class EventsResult:
    events: int
    batch: int
    limit: int
    interval: float
    calls: int
    seconds: float
    statuses_429: int
    acked: int
    error: str | None = None

    @property
    def needed(self) -> int:
        """Calls the backlog needs at the least: its polls and its acknowledgements."""
        return math.ceil(self.events / self.batch) + math.ceil(self.events / ACK_IDS)

    @property
    def allowed_s(self) -> float:
        """Seconds the rate limit allows for the calls made, spread evenly."""
        return self.calls * self.interval / self.limit

    @property
    def ratio(self) -> float:
        return self.seconds / self.allowed_s if self.allowed_s else math.inf


def _event(n: int) -> dict[str, object]:
    return {
        "id": f"bench-{n:06d}",
        "createdAt": "2026-11-30T12:00:00+00:00",
        "clientVersion": "1.0.0",
        "type": EVENT_TYPES[n % len(EVENT_TYPES)],
        "event": {"orderId": f"O-{n}", "sellerId": "4711", "lines": [{"sku": "A", "qty": 1}]},
    }


async def events_drain(
    session: Session, *, events: int, limit: int, interval: float, batch: int = 100
) -> EventsResult:
    emulator = Emulator(session, limit, interval)
    await emulator.start()
    suffix = uuid.uuid4().hex[:10]
    exchange, queue = f"bench.events.{suffix}", f"bench.events.{suffix}"
    unrouted = f"{queue}.unrouted"
    connection = await aio_pika.connect(session.broker.url)
    proc = None
    try:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        tap = await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        await tap.bind(declared, routing_key="#")
        for start in range(0, events, INJECT_CHUNK):
            chunk = [_event(n) for n in range(start, min(events, start + INJECT_CHUNK))]
            response = await emulator.http.post("/_emulator/events", json={"events": chunk})
            response.raise_for_status()
        settings = Settings(amqp_url=session.broker.url, amqp_exchange=exchange, amqp_queue=queue)
        env = WORKER.env(
            settings,
            emulator.url,
            EVENTS_UNROUTED_QUEUE=unrouted,
            EVENTS_LOCK_NAME=f"{queue}.lock",
            EVENTS_BATCH_SIZE=str(batch),
            EVENTS_POLL_INTERVAL="1",
            SCX_MAX_REQUESTS_PER_MINUTE=f"{limit * 60 / interval:g}",
        )
        argv = [sys.executable, "-m", "worker", "events"]
        proc = await session.children.start(argv, env, log=session.workdir / "events.log")
        first = None
        deadline = time.monotonic() + 60 + 2 * events / limit * interval
        while True:
            response = await emulator.http.get("/_emulator/state", params={"bodies": "0"})
            response.raise_for_status()
            state = response.json()
            calls = int(state["channel_calls"].get("events", 0))
            if first is None and calls:
                first = time.monotonic()
            ledger = state["events"]
            if ledger["pending"] == 0 and first is not None:
                done = time.monotonic()
                break
            if time.monotonic() > deadline or proc.returncode is not None:
                return EventsResult(
                    events, batch, limit, interval, calls, 0.0, 0, ledger["acked_total"],
                    error="did not drain (see events.log)",
                )  # fmt: skip
            await asyncio.sleep(0.05)
        return EventsResult(
            events,
            batch,
            limit,
            interval,
            calls,
            done - first,
            int(state["route_statuses"].get("events 429", 0)),
            int(ledger["acked_total"]),
        )
    finally:
        if proc is not None:
            await session.children.stop(proc, grace=30)
        channel = await connection.channel()
        for name in (queue, unrouted):
            await channel.queue_delete(name)
        await channel.exchange_delete(exchange)
        await connection.close()
        await emulator.stop()


def events_table(results: list[EventsResult]) -> list[str]:
    header = [
        "events", "EVENTS_BATCH_SIZE", "limit", "calls (needed)", "calls per event",
        "drain time", "the limit allows", "drain / allowed", "429s", "acknowledged", "error",
    ]  # fmt: skip
    rows = [
        [
            f"{r.events:,}",
            str(r.batch),
            f"{r.limit} per {r.interval:g} s",
            f"{r.calls:,} ({r.needed:,})",
            f"{r.calls / r.events:.3f}",
            f"{r.seconds:.1f} s",
            f"{r.allowed_s:.1f} s",
            f"{r.ratio:.3f}",
            str(r.statuses_429),
            f"{r.acked:,}",
            r.error or "",
        ]
        for r in results
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
