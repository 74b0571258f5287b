"""``scx-forwarder events`` under test: its environment, a backlog of seller events, the
queues that read what it published, and the check of what arrived."""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from tests.support.broker import Names
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn, worker_env
from worker.emulator import Emulator
from worker.emulator.events import seller_event, ticket_reply

OTHER_TYPES = (
    "Seller:Order.Shipping",
    "Seller:Order.Payment",
    "Seller:Offer.PriceUpdate",
    "Seller:Channel.Unlinked",
    "System:Notification",
)


def bridge_env(names: Names, emulator: Emulator, **extra: str) -> dict[str, str]:
    return worker_env(
        names,
        emulator,
        **{
            "EVENTS_UNROUTED_QUEUE": unrouted_queue(names),
            "EVENTS_LOCK_NAME": f"{names.queue}.lock",
            "EVENTS_POLL_INTERVAL": "0.2",
            "SCX_RETRY_INITIAL_WAIT": "0.05",
            "SCX_RETRY_MAX_WAIT": "0.5",
            "WORKER_SHUTDOWN_GRACE": "10",
            **extra,
        },
    )


def unrouted_queue(names: Names) -> str:
    return f"{names.queue}.unrouted"


async def start_bridge(env: dict[str, str], processes: list[Process]) -> Process:
    bridge = await spawn("events", env=env)
    processes.append(bridge)
    await wait_for(
        lambda: bridge.has_event("events.poller_active") or bridge.process.returncode is not None,
        timeout=30,
        what="the bridge to take the lock",
    )
    assert bridge.process.returncode is None, bridge.output[-3000:]
    return bridge


@dataclass
class Backlog:
    """Injected events and the messages each must become (by message_id)."""

    items: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    expected: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)
    """message_id -> (routing key, body for files, None for JSON bodies)."""

    @property
    def event_ids(self) -> set[str]:
        return {item["id"] for item in self.items}


def make_backlog(count: int, *, seed: int = 3, prefix: str = "ev") -> Backlog:
    """``count`` events: about a third ticket replies (0-3 files), the rest of other types."""
    rng = random.Random(seed)
    backlog = Backlog()
    for n in range(count):
        event_id = f"{prefix}-{n:05d}"
        if n % 3 == 0:
            ticket_id = f"CASE-{n}"
            names = [f"file{k}.bin" for k in range(rng.randint(0, 3))]
            backlog.items.append(
                ticket_reply(
                    event_id,
                    seller_id="4711",
                    ticket_id=ticket_id,
                    message=f"reply {n}",
                    name="Support" if n % 2 else None,
                    attachments=[(name, "application/octet-stream") for name in names],
                )
            )
            for name in names:
                data = rng.randbytes(rng.randint(0, 70_000))
                backlog.files.append(
                    {
                        "sellerId": "4711",
                        "ticketId": ticket_id,
                        "filename": name,
                        "contentType": "application/octet-stream",
                        "data": data,
                    }
                )
                backlog.expected[f"{event_id}/{name}"] = ("ticket.replied.attachment", data)
            backlog.expected[event_id] = ("ticket.replied", None)
        else:
            scx_type = OTHER_TYPES[n % len(OTHER_TYPES)]
            backlog.items.append(seller_event(event_id, scx_type, {"n": n, "orderId": f"O-{n}"}))
            key = "scx." + scx_type.lower().replace(":", ".")
            backlog.expected[event_id] = (key, None)
    return backlog


class Tap:
    """A queue bound to the test's exchange, read in arrival order."""

    def __init__(self, channel: AbstractChannel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.messages: list[AbstractIncomingMessage] = []

    async def take(self) -> int:
        queue = await self.channel.declare_queue(self.name, passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            await message.ack()
            self.messages.append(message)
        return len(self.messages)

    async def until(self, count: int, *, timeout: float = 30.0, quiet: float = 1.0) -> None:
        """Wait for ``count`` messages, then a quiet period in which no more may arrive."""

        async def enough() -> bool:
            return await self.take() >= count

        await wait_for(enough, timeout=timeout, what=f"{count} messages in {self.name}")
        await asyncio.sleep(quiet)  # a late duplicate must get its chance to show up
        await self.take()

    async def until_all(self, ids: set[str], *, timeout: float = 60.0, quiet: float = 1.0) -> None:
        """Wait until every one of ``ids`` arrived (duplicates may come too), then a quiet
        period."""

        async def complete() -> bool:
            await self.take()
            return ids <= self.by_id().keys()

        await wait_for(complete, timeout=timeout, what=f"{len(ids)} message ids in {self.name}")
        await asyncio.sleep(quiet)
        await self.take()

    def by_id(self) -> dict[str, list[AbstractIncomingMessage]]:
        grouped: dict[str, list[AbstractIncomingMessage]] = {}
        for message in self.messages:
            grouped.setdefault(str(message.message_id), []).append(message)
        return grouped


def check_published(tap: Tap, backlog: Backlog, *, exactly_once: bool) -> int:
    """Every expected message is there (with the right key, body and properties); returns
    the duplicates, which must repeat their first copy byte for byte."""
    grouped = tap.by_id()
    assert set(grouped) == set(backlog.expected), (
        f"missing {sorted(set(backlog.expected) - set(grouped))[:5]}, "
        f"unexpected {sorted(set(grouped) - set(backlog.expected))[:5]}"
    )
    duplicates = 0
    for message_id, copies in grouped.items():
        key, data = backlog.expected[message_id]
        first = copies[0]
        assert first.routing_key == key
        assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert first.timestamp is not None
        headers = first.headers or {}
        assert headers["x-scx-event-id"] == message_id.split("/")[0]
        if data is not None:
            assert first.body == data
            assert headers["sha256"] == hashlib.sha256(data).hexdigest()
        else:
            assert first.content_type == "application/json"
            assert orjson.loads(first.body)["id"] == message_id
        assert all(copy.body == first.body for copy in copies[1:])
        duplicates += len(copies) - 1
    if exactly_once:
        assert duplicates == 0, f"{duplicates} duplicates"
    return duplicates
