"""The broker objects the worker relies on, declared idempotently at start-up.

::

    exchange AMQP_EXCHANGE (topic, durable)
        └── AMQP_BINDING_KEY ──> queue AMQP_QUEUE (quorum by default)
                                   │ x-delivery-limit: returned this often -> dead-lettered
                                   └── x-dead-letter-* ──> queue AMQP_QUEUE.dlq

    queue AMQP_QUEUE.retry.<N>s   one per WORKER_RETRY_DELAYS entry, nobody consumes it
        └── x-message-ttl N s, then x-dead-letter-* ──> queue AMQP_QUEUE (tried again)

The worker publishes its own dead-letter copies straight into ``<queue>.dlq``, and
messages to retry later into a ``.retry.<N>s`` queue, through the default exchange (with
publisher confirms). The work queue's dead-letter arguments are for what the broker
dead-letters by itself: a message over the delivery limit (a poison message that keeps
killing workers).

Why one queue per delay: RabbitMQ 3.10 has no delayed delivery, and per-message TTLs in
one queue expire only at its head (a 10-minute message would hold up a 10-second one
behind it). In a queue where every message has the same TTL, the head is always the
first to expire. Quorum queues dead-letter ``at-least-once`` (a message moves back only
once the work queue has it); that strategy needs ``x-overflow: reject-publish``.

Classic queues (``AMQP_QUEUE_TYPE=classic``, for existing set-ups) have no delivery limit
on RabbitMQ 3.x, so a poison message is redelivered until someone removes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import FieldTable

from worker.core.settings import Settings


@dataclass(frozen=True)
class Topology:
    channel: AbstractChannel
    exchange: AbstractExchange
    queue: AbstractQueue


def queue_arguments(settings: Settings) -> FieldTable:
    args: FieldTable = {
        "x-queue-type": settings.amqp_queue_type,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.dead_letter_queue,
    }
    if settings.amqp_queue_type == "quorum":
        args |= {
            "x-delivery-limit": settings.amqp_delivery_limit,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
    return args


def retry_queue_arguments(settings: Settings, delay: float) -> FieldTable:
    args: FieldTable = {
        "x-queue-type": settings.amqp_queue_type,
        "x-message-ttl": max(1, round(delay * 1000)),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": settings.amqp_queue,
    }
    if settings.amqp_queue_type == "quorum":
        args |= {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
    return args


async def declare_topology(channel: AbstractChannel, settings: Settings) -> Topology:
    """Declare exchange, work queue, binding, DLQ and delay queues; a no-op if they match.

    A queue that exists with other arguments makes the broker close the channel with
    PRECONDITION_FAILED; the caller reports that as a configuration problem.
    """
    exchange = await channel.declare_exchange(
        settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    await channel.declare_queue(
        settings.dead_letter_queue,
        durable=True,
        arguments={"x-queue-type": settings.amqp_queue_type},
    )
    queue = await channel.declare_queue(
        settings.amqp_queue, durable=True, arguments=queue_arguments(settings)
    )
    await queue.bind(exchange, routing_key=settings.amqp_binding_key)
    for name, delay in settings.retry_queues.items():
        await channel.declare_queue(
            name, durable=True, arguments=retry_queue_arguments(settings, delay)
        )
    return Topology(channel, exchange, queue)
