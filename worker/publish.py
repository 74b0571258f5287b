"""Publish ticket events from JSON lines to the exchange, as a marketplace would.

Each non-blank line is one message body, sent byte for byte (invalid lines too: that is
how the demo and the tests exercise the dead-letter path). Messages are persistent,
``application/json``, carry a ``message_id`` (the event's ``id`` when the line has one) and
a timestamp, and are published with confirms and ``mandatory``. The worker's exchange and
queues are declared first (the same idempotent declaration the worker makes), so events
published before the worker ever ran wait in its queue; a ``--routing-key`` that no queue
is bound to is an error, not a silent drop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime

import aio_pika
import aiormq
import orjson

from worker import broker
from worker.settings import Settings
from worker.topology import declare_topology


class Unroutable(Exception):
    """The broker had no queue bound for a message's routing key."""


def _message_id(line: bytes) -> str:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict):
        for key in ("id", "ticketId"):
            if isinstance(event.get(key), str) and event[key]:
                return str(event[key])
    return str(uuid.uuid4())


# Confirms are awaited in windows: one round trip per message would cap a large file at
# a few hundred messages a second, an unbounded window would hold the whole file in memory.
CONFIRM_WINDOW = 256


async def publish_lines(
    settings: Settings, lines: Iterable[bytes], *, routing_key: str | None = None
) -> int:
    """Publish every non-blank line; returns how many the broker confirmed."""
    key = routing_key or settings.amqp_binding_key
    connection = await broker.connect(settings, "publish")
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = (await declare_topology(channel, settings)).exchange
        window: list[Awaitable[object]] = []
        count = 0
        for raw in lines:
            body = raw.rstrip(b"\r\n")
            if not body.strip():
                continue
            message = aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=_message_id(body),
                timestamp=datetime.now(UTC),
                app_id="scx-forwarder publish",
            )
            window.append(exchange.publish(message, routing_key=key, mandatory=True))
            if len(window) >= CONFIRM_WINDOW:
                count += await _confirmed(window, settings.amqp_exchange, key)
                window = []
        return count + await _confirmed(window, settings.amqp_exchange, key)


async def _confirmed(window: list[Awaitable[object]], exchange: str, key: str) -> int:
    try:
        await asyncio.gather(*window)
    except aiormq.exceptions.DeliveryError:
        raise Unroutable(
            f"no queue is bound to exchange {exchange!r} with routing key {key!r} "
            "(the worker's queue is bound with AMQP_BINDING_KEY)"
        ) from None
    return len(window)
