"""Publish ticket events from JSON lines to the exchange, as a marketplace would.

Each non-blank line is one message body, sent byte for byte (invalid lines too: that is
how the demo and the tests exercise the dead-letter path). Messages are persistent,
``application/json``, carry a ``message_id`` (the event's ``id`` when the line has one) and
a timestamp, and are published with confirms and ``mandatory``. The worker's exchange and
queues are declared first (the same idempotent declaration the worker makes), so events
published before the worker ever ran wait in its queue; a ``--routing-key`` that no queue
is bound to is an error, not a silent drop.

``--cloudevents`` publishes the events as a CloudEvents SDK would (see ``worker.forward.envelope``):
``structured`` sends each line unchanged with content type ``application/cloudevents+json``;
``binary`` sends an event's ``data`` as the body and its other top-level fields as ``ce-*``
headers (``ce-specversion: 1.0`` added when missing, the RabbitMQ binding's spelling). Lines
that are not an event with a ``data`` object (invalid samples, API tickets) go as they are.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime
from typing import Any, Literal

import aio_pika
import aiormq
import orjson

from worker.amqp import broker
from worker.amqp.topology import declare_topology
from worker.core.settings import Settings
from worker.forward.envelope import STRUCTURED_CONTENT_TYPE

CloudEventsMode = Literal["binary", "structured"]


class Unroutable(Exception):
    """The broker had no queue bound for a message's routing key."""


def _message_id(line: bytes) -> str:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        event = None
    # Never the ticketId: it names a conversation, and the worker would take two messages of
    # one conversation for one (worker.forward.identity).
    if isinstance(event, dict) and isinstance(event.get("id"), str) and event["id"]:
        return str(event["id"])
    return str(uuid.uuid4())


# Confirms are awaited in windows: one round trip per message would cap a large file at
# a few hundred messages a second, an unbounded window would hold the whole file in memory.
CONFIRM_WINDOW = 256


def _binary(body: bytes) -> tuple[bytes, dict[str, Any]] | None:
    """``(data, ce-* headers)`` of an event line, or ``None`` if the line is not one."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        return None
    headers: dict[str, Any] = {"ce-specversion": "1.0"}
    for name, value in event.items():
        if name != "data" and isinstance(value, str | int) and not isinstance(value, bool):
            headers[f"ce-{name.lower()}"] = str(value)
    return orjson.dumps(event["data"]), headers


def _message(body: bytes, cloudevents: CloudEventsMode | None) -> aio_pika.Message:
    content_type, headers = "application/json", None
    if cloudevents == "structured":
        content_type = STRUCTURED_CONTENT_TYPE
    elif cloudevents == "binary" and (binary := _binary(body)) is not None:
        body, headers = binary
    return aio_pika.Message(
        body,
        headers=headers,
        content_type=content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(headers["ce-id"]) if headers and "ce-id" in headers else _message_id(body),
        timestamp=datetime.now(UTC),
        app_id="scx-forwarder publish",
    )


async def publish_lines(
    settings: Settings,
    lines: Iterable[bytes],
    *,
    routing_key: str | None = None,
    cloudevents: CloudEventsMode | None = None,
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
            message = _message(body, cloudevents)
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
