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
from typing import Any

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
            # This emulator counts every /v1/channel* route in one window (no
            # --category-limits): the event category's pace is that window's.
            SCX_EVENT_REQUESTS_PER_MINUTE=f"{limit * 60 / interval:g}",
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


# --- one window per route category: 2 workers + the bridge (issue 18) ------------------------


@dataclass
class CategoriesResult:
    """2 workers draining a ticket backlog and the bridge draining ``events`` seller events,
    against the emulator's windows per route category (``--category-limits``)."""

    algorithm: str
    events: int
    channel_limit: int
    event_limit: int
    interval: float
    seconds: float  # measured from the first call, whole intervals
    drain_s: float  # from the first event call to the last event acknowledged
    channel_windows: list[tuple[int, int]]  # (accepted, limited) of each whole channel window
    event_windows: list[tuple[int, int]]  # the same, event windows that ended before the drain
    calls: int
    limited: int
    error: str | None = None

    @property
    def needed(self) -> int:
        """Event calls the backlog needs: a poll and an acknowledgement per page of 100."""
        return 2 * math.ceil(self.events / ACK_IDS)

    @property
    def minimum_s(self) -> float:
        return self.needed * self.interval / self.event_limit

    @property
    def drain_ratio(self) -> float:
        return self.drain_s / self.minimum_s if self.minimum_s else math.inf

    @property
    def ticket_share(self) -> float:
        windows = self.channel_windows
        return sum(a for a, _ in windows) / (self.channel_limit * len(windows)) if windows else 0.0

    @property
    def event_share(self) -> float:
        windows = self.event_windows
        return sum(a for a, _ in windows) / (self.event_limit * len(windows)) if windows else 0.0

    @property
    def share_429(self) -> float:
        return self.limited / self.calls if self.calls else 0.0


async def categories_drain(
    session: Session,
    *,
    algorithm: str,
    events: int,
    channel_limit: int,
    event_limit: int,
    interval: float,
    seconds: float,
    workers: int = 2,
) -> CategoriesResult:
    """Tickets >= 97 % of the channel window, event calls >= 90 % of the event window while
    events remain, 429s <= 1 %, the events drained within 1.1 x the event window's minimum."""
    from bench.pacing import BRIDGE_ARGV
    from worker.emulator.events import EXAMPLE_PAYLOADS, example_event
    from worker.ops.samples import sample_lines

    emulator = Emulator(
        session,
        channel_limit,
        interval,
        extra=("--category-limits", "--event-rate-limit", str(event_limit)),
    )
    await emulator.start()
    settings = await session.broker.new_queue()
    connection = await aio_pika.connect(session.broker.url)
    procs = []
    cell = (algorithm, events, channel_limit, event_limit, interval, seconds)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        tap = await channel.declare_queue(
            f"{settings.amqp_queue}.events", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await tap.bind(exchange, routing_key="scx.#")
        backlog = int(channel_limit / interval * seconds * 1.5) + 100 * workers
        await session.broker.publish_backlog(settings, list(sample_lines(backlog)))
        await emulator.count_with(algorithm)
        await emulator.reset()
        types = [t for t in EXAMPLE_PAYLOADS if t != "Seller:Ticket.Reply"]
        for start in range(0, events, INJECT_CHUNK):
            chunk = [
                example_event(types[n % len(types)], f"bench-{n:06d}")
                for n in range(start, min(events, start + INJECT_CHUNK))
            ]
            response = await emulator.http.post("/_emulator/events", json={"events": chunk})
            response.raise_for_status()
        pace = {
            "SCX_MAX_REQUESTS_PER_MINUTE": f"{channel_limit * 60 / interval:g}",
            "SCX_EVENT_REQUESTS_PER_MINUTE": f"{event_limit * 60 / interval:g}",
        }
        for k in range(workers):
            env = WORKER.env(settings, emulator.url, **pace)
            log = session.workdir / f"categories-{algorithm}-{k}.log"
            procs.append(await session.children.start(WORKER.argv, env, log=log))
        env = WORKER.env(
            settings, emulator.url, EVENTS_BATCH_SIZE="100", EVENTS_POLL_INTERVAL="1", **pace
        )
        log = session.workdir / f"categories-{algorithm}-events.log"
        procs.append(await session.children.start(list(BRIDGE_ARGV), env, log=log))
        deadline = time.monotonic() + 60
        while True:
            state = await emulator.state()
            if sum(state["channel_calls"].values()):
                break
            if time.monotonic() > deadline or any(p.returncode is not None for p in procs):
                return CategoriesResult(*cell, 0.0, [], [], 0, 0, "no call within 60 s")
            await asyncio.sleep(0.05)
        started = time.monotonic()
        first_event = drained = None
        while (now := time.monotonic()) < started + seconds - 0.1:
            state = await emulator.state()
            if first_event is None and state["channel_calls"].get("events", 0):
                first_event = now
            if drained is None and first_event is not None and state["events"]["pending"] == 0:
                drained = now
            await asyncio.sleep(0.05)
        state = await emulator.state()
    finally:
        await asyncio.gather(*(session.children.stop(p, grace=30) for p in procs))
        channel = await connection.channel()
        await channel.queue_delete(f"{settings.amqp_queue}.events")
        await connection.close()
        await session.broker.delete(settings)
        await emulator.stop()
    if first_event is None or drained is None:
        return CategoriesResult(*cell, 0.0, [], [], 0, 0, "the events did not drain in time")
    # The emulator's clock at `started` (state["clock"] was read at the end of the run).
    epoch = state["clock"] - (time.monotonic() - started)
    return _categories_result(
        cell, state, drain_end=epoch + (drained - started), end=epoch + seconds,
        drain_s=drained - first_event,
    )  # fmt: skip


def _categories_result(
    cell: tuple[str, int, int, int, float, float],
    state: dict[str, Any],
    *,
    drain_end: float,
    end: float,
    drain_s: float,
) -> CategoriesResult:
    """Whole windows of each category from the emulator's records: the channel's within the
    run, the event category's that ended before the last event was acknowledged."""
    channel_windows, event_windows = [], []
    for window in state["rate_windows"]:
        over = window["started_at"] + window["interval"]
        row = (window["accepted"], window["limited"])
        if window["category"] == "channel" and over <= end + 0.5:
            channel_windows.append(row)
        elif window["category"] == "event" and over <= drain_end:
            event_windows.append(row)
    statuses = state["route_statuses"]
    calls = sum(statuses.values()) + state["auth_calls"]
    limited = sum(n for key, n in statuses.items() if key.endswith(" 429"))
    return CategoriesResult(*cell, drain_s, channel_windows, event_windows, calls, limited)


def categories_table(results: list[CategoriesResult]) -> list[str]:
    header = [
        "counting", "windows (per interval)", "tickets / channel window",
        "event calls / event window", "429s", "events", "drained in", "minimum", "ratio", "error",
    ]  # fmt: skip
    rows = [
        [
            r.algorithm,
            f"channel {r.channel_limit}, event {r.event_limit} per {r.interval:g} s",
            f"{100 * r.ticket_share:.1f} % ({len(r.channel_windows)} windows)",
            f"{100 * r.event_share:.1f} % ({len(r.event_windows)} windows)",
            f"{r.limited} of {r.calls} ({100 * r.share_429:.2f} %)",
            f"{r.events:,}",
            f"{r.drain_s:.1f} s",
            f"{r.minimum_s:.1f} s",
            f"{r.drain_ratio:.3f}",
            r.error or "",
        ]
        for r in results
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines
