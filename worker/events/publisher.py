"""Publishing the bridge's messages with confirms, and telling every broker answer apart.

::

    publish(mandatory) on AMQP_EXCHANGE
    ├── Basic.Ack                      -> CONFIRMED
    ├── Basic.Return, then Basic.Ack   -> aiormq PublishError (on_return_raises): no queue is
    │                                     bound for the key -> a copy to EVENTS_UNROUTED_QUEUE
    │                                     (default exchange, mandatory, confirmed) -> UNROUTED
    ├── Basic.Nack                     -> aiormq DeliveryError, *not* a PublishError: the
    │                                     broker refused it (a full queue with reject-publish)
    │                                     -> NACKED, the event stays unacknowledged; after
    │                                     EVENTS_DELIVERY_TRIES deliveries ``refused_copy``
    │                                     puts it in EVENTS_UNROUTED_QUEUE instead
    └── channel/connection gone        -> FAILED: the batch is retried on a new connection

``PublishError`` is a subclass of ``DeliveryError``, so the order of the ``except`` clauses
below is the whole distinction. aiormq matches a ``Basic.Return`` to its publish by
``message_id``, so the bridge never has two messages with one ``message_id`` in flight on a
channel (``Bridge`` deduplicates ids within a batch; a reply's files are ``<id>/<filename>``).

A file's bytes are read from its spool only for its publish, and the caller awaits each
file's confirmation before the next: memory holds one file at a time.
"""

from __future__ import annotations

import asyncio
import enum
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import AbstractChannel, AbstractExchange

from worker.amqp import headers as h
from worker.amqp.errors import BROKER_GONE
from worker.events.mapping import Outgoing
from worker.obs import tracing


class Result(enum.Enum):
    CONFIRMED = "confirmed"
    UNROUTED = "unrouted"  # kept in the unrouted queue (confirmed there)
    NACKED = "nacked"  # refused by the broker: not held
    FAILED = "failed"  # no answer: channel or connection lost


class Publisher:
    def __init__(
        self, channel: AbstractChannel, exchange: AbstractExchange, unrouted_queue: str
    ) -> None:
        self._exchange = exchange
        self._default = channel.default_exchange
        self._unrouted = unrouted_queue

    async def publish(self, out: Outgoing, *, unrouted: bool = False) -> Result:
        """One message to ``AMQP_EXCHANGE`` (or, with ``unrouted``, straight to the queue)."""
        if unrouted:
            return await self._keep(out, {})
        headers = dict(out.headers)
        try:
            with tracing.publishing(self._exchange.name, out.routing_key, headers):
                await self._exchange.publish(
                    _message(out, headers), routing_key=out.routing_key, mandatory=True
                )
        except aiormq.exceptions.PublishError:
            return await self._keep(
                out,
                {
                    h.ORIGINAL_EXCHANGE: self._exchange.name,
                    h.ORIGINAL_ROUTING_KEY: out.routing_key,
                    h.ERROR_KIND: "unroutable",
                    h.ERROR_REASON: "no queue is bound for the routing key",
                    h.ERROR_DETAIL: orjson.dumps(
                        {"exchange": self._exchange.name, "routing_key": out.routing_key}
                    ).decode(),
                },
            )
        except aiormq.exceptions.DeliveryError:
            return Result.NACKED
        except BROKER_GONE:
            return Result.FAILED
        return Result.CONFIRMED

    async def publish_all(self, messages: list[tuple[Outgoing, bool]]) -> list[Result]:
        """Publish ``(message, unrouted)`` pairs in order: text messages concurrently, each
        file alone (bounded memory)."""
        pending: list[asyncio.Task[Result]] = []
        for out, unrouted in messages:
            task = asyncio.ensure_future(self.publish(out, unrouted=unrouted))
            pending.append(task)
            if not isinstance(out.body, bytes):
                await asyncio.wait({task})
        results = await asyncio.gather(*pending, return_exceptions=True)
        # A closing channel rejects pending confirmations with its close reason, or with a
        # CancelledError of the publish alone; either way the broker did not confirm.
        return [r if isinstance(r, Result) else Result.FAILED for r in results]

    async def refused_copy(self, out: Outgoing, *, tries: int) -> Result:
        """The last resort for a message the broker kept refusing (nack): a confirmed copy in
        the unrouted queue saying so (``x-error-kind: refused``); NACKED if that is refused
        too, and then nothing the bridge can do publishes it."""
        return await self._keep(
            out,
            {
                "x-original-exchange": self._exchange.name,
                "x-original-routing-key": out.routing_key,
                "x-error-kind": "refused",
                "x-error-reason": "the broker refused the message on every delivery",
                "x-error-detail": orjson.dumps(
                    {
                        "exchange": self._exchange.name,
                        "routing_key": out.routing_key,
                        "deliveries": tries,
                    }
                ).decode(),
            },
        )

    async def _keep(self, out: Outgoing, extra: dict[str, Any]) -> Result:
        """A confirmed copy in the unrouted queue; NACKED if it cannot be stored there."""
        headers = {**out.headers, **extra}
        try:
            with tracing.publishing("", self._unrouted, headers):
                await self._default.publish(
                    _message(out, headers), routing_key=self._unrouted, mandatory=True
                )
        except aiormq.exceptions.DeliveryError:
            # Refused, or the unrouted queue itself is gone (an operator deleted it): the
            # event stays unacknowledged and comes again.
            return Result.NACKED
        except BROKER_GONE:
            return Result.FAILED
        return Result.UNROUTED


def _message(out: Outgoing, headers: dict[str, Any]) -> aio_pika.Message:
    return aio_pika.Message(
        out.payload(),
        content_type=out.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=out.message_id,
        timestamp=datetime.now(UTC),
        headers=headers,
        app_id="scx-forwarder events",
    )
