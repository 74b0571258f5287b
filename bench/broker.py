"""The harness's own broker side: fresh topology per run, backlogs, paced publishing, depth.

Every run gets a uniquely named exchange, queue and DLQ (``bench.<hex>``), declared with the
worker's own ``declare_topology`` (a quorum queue with the worker's arguments), so our worker
finds exactly the topology it declares itself and the peers consume the very same kind of
queue. ``Broker.close`` deletes whatever is left, also after a Ctrl-C.

Backlogs are published like ``scx-forwarder publish`` publishes (persistent,
``application/json``, a ``message_id`` and a ``timestamp``) but without waiting for a confirm
per window; the harness then waits until the broker reports the whole backlog in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from pamqp.commands import Basic

from worker.amqp.topology import declare_topology
from worker.core.settings import Settings
from worker.ops.publish import CONFIRM_WINDOW

# What a lost or restarted broker raises somewhere in aio-pika / aiormq.
BROKER_ERRORS: tuple[type[Exception], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


def broker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the broker connection went away (aiormq also raises a plain
    ``RuntimeError("<Connection ...> closed")`` while a robust connection reconnects)."""
    if isinstance(exc, BROKER_ERRORS):
        return True
    if isinstance(exc, RuntimeError) and str(exc).endswith("closed"):
        tb = exc.__traceback__
        while tb is not None:
            if "aiormq" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
    return False


class Broker:
    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._created: dict[str, Settings] = {}

    async def connect(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": "scx-forwarder bench harness"}
        )
        self._channel = await self._connection.channel(publisher_confirms=False)
        self._raw = await self._channel.get_underlay_channel()

    @property
    def version(self) -> str:
        transport = self._connection.transport if self._connection else None
        props = transport.connection.server_properties if transport else {}
        product, version = props.get("product", b"RabbitMQ"), props.get("version", b"?")
        return " ".join(x.decode() if isinstance(x, bytes) else str(x) for x in (product, version))

    async def _ready_channel(self) -> tuple[AbstractChannel, aiormq.abc.AbstractChannel]:
        assert self._channel is not None, "connect() first"
        if self._channel.is_closed:  # e.g. a passive declare of a deleted queue closed it
            await self._channel.reopen()
        self._raw = await self._channel.get_underlay_channel()
        return self._channel, self._raw

    async def wait_until_back(self, patience: float = 180.0) -> None:
        """After a lost connection: wait until the (robust) connection works again."""
        deadline = time.monotonic() + patience
        while True:
            try:
                _, raw = await self._ready_channel()
                await raw.exchange_declare("amq.topic", exchange_type="topic", passive=True)
                return
            except Exception as exc:
                if not broker_lost(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(2)

    async def new_queue(self) -> Settings:
        """Declare a fresh exchange + quorum queue + DLQ exactly as the worker would."""
        suffix = uuid.uuid4().hex[:10]
        settings = Settings(
            amqp_url=self.url,
            amqp_exchange=f"bench.{suffix}",
            amqp_queue=f"bench.{suffix}",
            # The events bridge's (pacing "+ bridge"): its own, not the broker-wide defaults
            # that any other bridge on this broker may hold.
            events_unrouted_queue=f"bench.{suffix}.unrouted",
            events_lock_name=f"bench.{suffix}.lock",
        )
        channel, _ = await self._ready_channel()
        self._created[settings.amqp_queue] = settings
        await declare_topology(channel, settings)
        return settings

    async def delete(self, settings: Settings) -> None:
        channel, _ = await self._ready_channel()
        queues = (settings.amqp_queue, settings.dead_letter_queue, *settings.retry_queues,
                  settings.events_unrouted_queue)  # fmt: skip
        for queue in queues:
            await channel.queue_delete(queue)
        await channel.exchange_delete(settings.amqp_exchange)
        self._created.pop(settings.amqp_queue, None)

    async def depth(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of an existing queue."""
        _, raw = await self._ready_channel()
        ok = await raw.queue_declare(queue, passive=True)
        return int(ok.message_count or 0), int(ok.consumer_count or 0)

    async def publish(self, settings: Settings, body: bytes, message_id: str) -> None:
        _, raw = await self._ready_channel()
        await self._publish(raw, settings, body, message_id)

    @staticmethod
    async def _publish(
        raw: aiormq.abc.AbstractChannel, settings: Settings, body: bytes, message_id: str
    ) -> aiormq.abc.ConfirmationFrameType | None:
        return await raw.basic_publish(
            body,
            exchange=settings.amqp_exchange,
            routing_key=settings.amqp_binding_key,
            properties=Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=message_id,
                timestamp=datetime.now(UTC),
                app_id="scx-forwarder bench",
            ),
        )

    async def publish_backlog(
        self, settings: Settings, bodies: Sequence[bytes], *, patience: float = 300.0
    ) -> int:
        """Publish every body (over a few channels at once), then wait until the queue holds
        all of them."""
        assert self._connection is not None
        # Confirmed, so that a publish the quorum queue refuses (reject-publish) is sent again
        # rather than lost; a window in flight per channel (as in `scx-forwarder publish`) is fast.
        channels = [await self._connection.channel(publisher_confirms=True) for _ in range(3)]
        try:

            async def publish_one(raw: aiormq.abc.AbstractChannel, i: int) -> None:
                for attempt in range(100):
                    confirmed = await self._publish(raw, settings, bodies[i], f"bench-{i}")
                    if isinstance(confirmed, Basic.Ack):
                        return
                    await asyncio.sleep(0.05 * attempt)  # the queue refused it: let it catch up
                raise RuntimeError(f"the broker refused message {i} 100 times")

            async def publish_share(k: int) -> None:
                raw = await channels[k].get_underlay_channel()
                share = range(k, len(bodies), len(channels))
                for start in range(0, len(share), CONFIRM_WINDOW):
                    window = share[start : start + CONFIRM_WINDOW]
                    await asyncio.gather(*(publish_one(raw, i) for i in window))

            await asyncio.gather(*(publish_share(k) for k in range(len(channels))))
        finally:
            for channel in channels:
                with contextlib.suppress(Exception):
                    await channel.close()
        count = len(bodies)
        deadline = time.monotonic() + patience
        while (ready := (await self.depth(settings.amqp_queue))[0]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready} of {count} messages arrived in the queue")
            await asyncio.sleep(0.1)
        return count

    async def publish_paced(
        self,
        settings: Settings,
        make_body: Callable[[int], bytes],
        *,
        rate: float,
        count: int,
    ) -> None:
        """Publish ``count`` messages at ``rate`` per second on a fixed schedule.

        ``make_body(i)`` is called right before message i is sent, so a time it stamps into
        the body is the publish time. A late tick is sent at once (no catch-up burst beyond
        what was missed).
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(count):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.publish(settings, make_body(i), f"bench-paced-{i}")

    async def close(self, patience: float = 60.0) -> None:
        """Delete every queue and exchange this harness created and is still holding.

        The connection is robust: if the broker was restarted meanwhile (other people's
        tests do that), keep trying for ``patience`` seconds until it is back.
        """
        if self._connection is None:
            return
        deadline = time.monotonic() + patience
        while self._created and time.monotonic() < deadline:
            for settings in list(self._created.values()):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.delete(settings), 10)
            if self._created:
                await asyncio.sleep(2)
        if self._created:
            left = ", ".join(sorted(self._created))
            print(f"bench: could not delete these queues (and their .dlq/.retry.*): {left}")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._connection.close(), 10)
        self._connection = None
