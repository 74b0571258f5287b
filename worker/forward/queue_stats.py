"""Queue depths for the alert rules: a passive declare of each queue on a timer.

Nothing consumes the dead-letter queue, so no consumer-side metric sees it grow, and not
every marketplace scrapes RabbitMQ's own exporter. So every ``METRICS_QUEUE_INTERVAL``
seconds (default 30) each process asks the broker about its own queues with a *passive*
declare (nothing is created or changed) and exports what the ``declare-ok`` says:
``scx_forwarder_queue_messages{queue, role}`` (ready messages; for the DLQ, which nobody
consumes, its depth) and ``scx_forwarder_queue_consumers{queue, role}``.

Cost, bounded by configuration: ``run`` declares its work queue, its DLQ and one queue per
``WORKER_RETRY_DELAYS`` entry (at most 12), one after the other, on one short-lived channel
per round, every interval, per replica. Each declare has a timeout, so a slow broker
delays a round instead of stacking them.

The declares go over the process's own broker connection (the forwarder's, which the
service hands over as a callable), through its AMQP layer (aiormq) rather than an aio-pika
robust channel: a passive declare of a missing queue closes its channel with 404, which a
robust channel would "restore". When there is no open connection, or a declare fails, the queue's
gauges are NaN: an alert must not read a stale depth as a current one.

The events bridge reports its unrouted queue the same way: ``watching({name: "unrouted"})``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable, Mapping

import aiormq
import structlog
from aio_pika.abc import AbstractConnection

from worker.amqp.errors import BROKER_ERRORS
from worker.core.settings import Settings
from worker.obs import metrics

log = structlog.get_logger(__name__)

DECLARE_TIMEOUT = 5.0


def worker_queues(settings: Settings) -> dict[str, str]:
    """The queues of ``run`` by name, with their ``role`` label."""
    queues = {settings.amqp_queue: "work", settings.dead_letter_queue: "dlq"}
    queues |= {name: "retry" for name in settings.retry_queues}
    return queues


async def poll_once(queues: Mapping[str, str], connection: AbstractConnection | None) -> None:
    """Declare each queue passively on ``connection`` and export the answers."""
    amqp = connection.transport.connection if connection and connection.transport else None
    if amqp is None or amqp.is_closed:
        _unknown(queues)
        return
    channel: aiormq.abc.AbstractChannel | None = None
    try:
        for name, role in queues.items():
            if channel is None or channel.is_closed:
                channel = await asyncio.wait_for(amqp.channel(), DECLARE_TIMEOUT)
            try:
                ok = await asyncio.wait_for(
                    channel.queue_declare(name, passive=True), DECLARE_TIMEOUT
                )
            except BROKER_ERRORS as exc:
                # A missing queue (404) closes the channel; the next one opens another.
                log.debug("metrics.queue_unknown", queue=name, error=type(exc).__name__)
                metrics.queue_stats(name, role, math.nan, math.nan)
                continue
            metrics.queue_stats(name, role, ok.message_count or 0, ok.consumer_count or 0)
    except BROKER_ERRORS as exc:
        log.debug("metrics.queue_stats_failed", error=type(exc).__name__)
        _unknown(queues)
    finally:
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*BROKER_ERRORS):
                await asyncio.wait_for(channel.close(), DECLARE_TIMEOUT)


async def watch(
    queues: Mapping[str, str], interval: float, connection: Callable[[], AbstractConnection | None]
) -> None:
    """Poll forever (until cancelled), ``interval`` seconds between the starts of rounds,
    on the connection ``connection()`` returns then (None: every depth unknown)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await poll_once(queues, connection())
        await asyncio.sleep(max(0.0, interval - (loop.time() - started)))


@contextlib.asynccontextmanager
async def watching(
    queues: Mapping[str, str], interval: float, connection: Callable[[], AbstractConnection | None]
) -> AsyncIterator[None]:
    """Keep the queue gauges current while the block runs."""
    task = asyncio.create_task(watch(queues, interval, connection), name="queue-stats")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _unknown(queues: Mapping[str, str]) -> None:
    for name, role in queues.items():
        metrics.queue_stats(name, role, math.nan, math.nan)
