"""The real broker as the tests use it: a test's own names, publishing, counting, collecting.

Every test gets its own exchange and queues (``Names``); the ``channel`` fixture deletes them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from tests.support.polling import wait_for

# Delay-stage delays the tests use (short, to scale time with settings); the production
# defaults are listed too because process-level tests run with them. Fixtures delete the
# delay queues of both.
TEST_RETRY_DELAYS = (0.3, 1.0)
_ALL_RETRY_DELAYS = (*TEST_RETRY_DELAYS, 10.0, 60.0, 600.0)


@dataclass(frozen=True)
class Names:
    exchange: str
    queue: str
    binding_key: str = "ticket.created"

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    def retry(self, delay: float) -> str:
        return f"{self.queue}.retry.{delay:g}s"

    @property
    def all_queues(self) -> list[str]:
        return [self.queue, self.dlq, *(self.retry(delay) for delay in _ALL_RETRY_DELAYS)]


async def publish(
    channel: AbstractChannel,
    names: Names,
    bodies: Iterable[bytes],
    **properties: Any,
) -> list[str]:
    """Publish bodies to the test exchange with confirms; returns their message ids."""
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    ids = []
    for body in bodies:
        message_id = properties.pop("message_id", None) or uuid.uuid4().hex
        ids.append(message_id)
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, **properties),
            routing_key=names.binding_key,
            mandatory=True,
        )
    return ids


async def queue_depth(amqp: AbstractRobustConnection, queue: str) -> int:
    """Messages ready in ``queue``, counted by taking them and handing them back.

    The ``message_count`` of a passive declare lags behind on quorum queues (seen on
    RabbitMQ 3.10: stuck one short for seconds), so assertions count for real.
    """
    counting = await amqp.channel()
    try:
        declared = await counting.declare_queue(queue, passive=True)
        count = 0
        while await declared.get(no_ack=False, fail=False) is not None:
            count += 1
        return count
    finally:
        await counting.close()  # the unacked messages go back to the queue


# How long ``collect`` keeps looking after the expected count arrived.
QUIET_PERIOD = 0.3


async def collect(
    channel: AbstractChannel, queue: str, n: int, *, timeout: float = 20.0
) -> list[AbstractIncomingMessage]:
    """Take messages off ``queue`` until there are ``n``, then check that no more arrive."""
    declared = await channel.declare_queue(queue, passive=True)
    messages: list[AbstractIncomingMessage] = []

    async def take() -> bool:
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            await message.ack()
            messages.append(message)
        return len(messages) >= n

    await wait_for(take, timeout=timeout, what=f"{n} messages in {queue}")
    # A duplicate may arrive just after the n-th message: keep taking for a quiet period,
    # so that "exactly n" is asserted on what arrived, not on how fast we looked.
    quiet_until = time.monotonic() + QUIET_PERIOD
    while time.monotonic() < quiet_until:
        await take()
        await asyncio.sleep(0.02)
    assert len(messages) == n, f"expected {n} messages in {queue}, got {len(messages)}"
    return messages


@asynccontextmanager
async def no_leftovers(amqp: AbstractRobustConnection, names: Names) -> AsyncIterator[None]:
    """Assert at exit that the work queue holds nothing ready (nothing left or requeued)."""
    yield
    assert await queue_depth(amqp, names.queue) == 0


async def close_broker_connections(name_prefix: str) -> int:
    """Have the broker close the connections whose client-given name starts with a prefix."""
    listing = await rabbitmqctl(
        "list_connections", "--no-table-headers", "pid", "client_properties"
    )
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if f'"connection_name","{name_prefix}' in line.replace("<<", "").replace(">>", "")
    ]
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "test: simulated broker restart")
    return len(pids)


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, args
    return out.decode()
