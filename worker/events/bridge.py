"""The events bridge (``scx-forwarder events``): SCX seller events out to RabbitMQ.

One loop: poll ``GET /v1/channel/event``, map every item (``worker.events.mapping``), fetch a
reply's files, publish with confirms (``worker.events.publisher``), then acknowledge in SCX what
the broker holds. ``_settle`` is the one place that decides for each event:

==================================  =========================================================
what the broker said                what happens to the SCX event
==================================  =========================================================
every message confirmed             acknowledged (``DELETE /v1/channel/event``, batched)
a message unroutable (returned)     its copy kept in ``EVENTS_UNROUTED_QUEUE``, confirmed;
                                    then acknowledged as above
unmappable (bad envelope, a reply   the raw item in the unrouted queue with ``x-error-kind``
that fails validation)              and ``x-error-detail``, confirmed; then acknowledged
a message refused (nack)            not acknowledged: SCX delivers it again later; at the
                                    ``EVENTS_DELIVERY_TRIES``-th such delivery a copy goes to
                                    the unrouted queue (``x-error-kind: refused``), then acked
that copy refused as well           ``events.unpublishable`` (error, counted, alert): held,
                                    and no poll until it is published (every poll would spend
                                    one of SCX's 10 deliveries)
no answer (connection lost)         kept in hand; published again on the next connection
                                    (same ``message_id``s), then acknowledged
no ``id``                           cannot be acknowledged: logged and counted
a file's download kept failing      not acknowledged (SCX delivers it again); at the
                                    ``EVENTS_DELIVERY_TRIES``-th such delivery the reply is
                                    published with the file marked not delivered; a permanent
                                    answer (404) is published as ``unavailable`` at once
==================================  =========================================================

SCX transmits an unacknowledged event again after about 5 minutes, **at most 10 times**
(``worker.events.tries`` counts the failed deliveries per event id, in Redis too when
configured). So an event left unacknowledged on purpose takes about 5 minutes per try to
come back: a reply whose file keeps failing is published about ``(EVENTS_DELIVERY_TRIES - 1)
x 5`` minutes after its first delivery.

Acknowledgements that fail (API down) are kept and sent before the next poll, so none is
lost while the process lives; a crash before the acknowledgement makes SCX deliver the event
again, and it is published again with the same ``message_id`` (at-least-once).

**One active poller.** Replicas contend for an exclusive queue named ``EVENTS_LOCK_NAME``;
the broker lets one connection declare it and deletes it when that connection closes (a
process killed with -9 closes its socket at once) or misses its heartbeats (``HEARTBEAT``
seconds: a connection that went silent was dropped after about 8 s in the tests). A standby
tries every ``LOCK_RETRY`` seconds, so it takes over well within 15 s. The holder re-declares the
queue before every poll, so an operator deleting the queue cannot leave two pollers. The
connection is a plain one with its own reconnect loop rather than aio-pika's robust one: a
robust channel would quietly re-declare the lock on reconnect, and this loop has to know
when it lost the lock. A page in hand when the connection drops (events published without
an answer, items not looked at yet) is finished on the next connection whether or not the
lock is taken again: publishing twice is harmless (same ``message_id``s), and it was polled
while the lock was held.

**Stopping.** ``stop()`` (SIGTERM) ends the loop after the batch in hand is published,
confirmed and acknowledged; ``worker.events.service`` gives that ``WORKER_SHUTDOWN_GRACE``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection

from worker.amqp import broker
from worker.amqp.errors import BROKER_GONE
from worker.core.errors import EXIT_OK, RequestRejected, RetryLater
from worker.core.settings import Settings
from worker.core.spool import Spooled, clear_spool_dir, spool_dir
from worker.events.mapping import (
    PAGE_CAP,
    FileOutcome,
    NoId,
    Outgoing,
    SellerEvent,
    TicketReply,
    Unmappable,
    decode,
    other_message,
    reply_messages,
    unmappable_message,
)
from worker.events.publisher import Publisher, Result
from worker.events.tries import SCX_MAX_DELIVERIES, DeliveryTries
from worker.obs import metrics, tracing
from worker.obs.labels import event_type_label
from worker.scx import ATTACHMENT_PATH, MAX_ACK_IDS, ScxClient, Unavailable

log = structlog.get_logger(__name__)

# Seconds; proposed to the broker, which takes the lower of its own and ours. The broker
# dropped a connection that went silent about 8 s after it did (tests/events/test_bridge.py).
HEARTBEAT = 3
LOCK_RETRY = 1.0
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
# After a failed poll or acknowledgement: the first wait, and the longest (it doubles).
FAILURE_WAITS = (1.0, 30.0)


class BrokerLost(Exception):
    """The broker connection is gone (or publishes went unanswered): start a new one."""


_LOST: tuple[type[BaseException], ...] = (BrokerLost, *BROKER_GONE)
_REFUSED = (
    aiormq.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
)


@dataclass
class Planned:
    """One event of the batch in hand and the messages it becomes."""

    event_id: str
    type: object  # as SCX sent it; metrics and logs bound it (event_type_label)
    created: datetime | None
    messages: list[Outgoing]
    unrouted: bool = False  # unmappable: straight to the unrouted queue
    files: list[Spooled] = field(default_factory=list)

    def close(self) -> None:
        for file in self.files:
            file.close()


class Bridge:
    def __init__(self, settings: Settings, client: ScxClient) -> None:
        self._settings = settings
        self._client = client
        self._stopping = asyncio.Event()
        self._lost = asyncio.Event()
        self._in_hand: list[Planned] = []
        self._items: deque[object] = deque()  # of the page, not looked at yet
        self._seen: set[str] = set()  # ids of the page so far
        self._to_ack: list[tuple[str, object]] = []  # (event id, SCX type)
        self._spool = spool_dir("events")
        self._tries = DeliveryTries(settings)
        # Events nothing could publish, not even a copy to the unrouted queue: held, and
        # published again before any poll (a poll would only spend SCX deliveries).
        self._blocked: list[Planned] = []
        self._unpublishable: set[str] = set()  # counted once per event id
        self._failures = 0
        self.exit_code = EXIT_OK
        self.active = False
        """True while this process holds the lock and polls."""
        self.running = False
        """True while connected with the exchange and unrouted queue declared (readiness)."""
        self.connection: AbstractConnection | None = None
        """The broker connection of the session, the last one after a loss (readiness)."""

    def stop(self, exit_code: int = 0) -> None:
        """Finish the batch in hand, then return; the first non-zero exit code sticks."""
        if exit_code and not self.exit_code:
            self.exit_code = exit_code
        self._stopping.set()

    @property
    def busy(self) -> bool:
        """Work the broker or the API still owes: a batch in hand, acknowledgements."""
        return bool(self._in_hand or self._items or self._to_ack or self._blocked)

    async def run(self) -> int:
        """Poll while holding the lock, until ``stop()``; returns the exit code.

        Raises what the first connection attempt raised (the caller maps it to exit 1);
        later losses are retried here.
        """
        if removed := clear_spool_dir(self._spool):
            log.info("events.spool_cleared", removed=removed)
        connected_once = False
        failures = 0
        try:
            # Stopping, a page the broker still owes keeps the loop (within the grace);
            # acknowledgements get one more try, in the session's last _forward.
            while not self._stopping.is_set() or self._in_hand or self._items:
                try:
                    connection = await self._connect()
                except broker.CONNECT_ERRORS as exc:
                    if not connected_once:
                        raise
                    delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                    failures += 1
                    log.warning("events.broker_unreachable", error=_text(exc), retry_in_s=delay)
                    # Not woken by the lost connection: it stays lost until a connect works,
                    # and waking on it made this loop retry about every millisecond.
                    await self._pause(delay, connected=False)
                    continue
                connected_once, failures = True, 0
                try:
                    await self._session(connection)
                except _REFUSED:
                    raise  # the exchange or queue exists otherwise, or no permission: no retry
                except _LOST as exc:
                    log.warning(
                        "events.connection_lost", error=_text(exc), in_hand=len(self._in_hand)
                    )
                finally:
                    self._set_active(False)
                    self.running = False
                    with contextlib.suppress(Exception):
                        await connection.close()
        finally:
            for planned in self._in_hand + self._blocked:
                planned.close()
            await self._tries.aclose()
        log.info("worker.stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _connect(self) -> AbstractConnection:
        # A plain connection to the first node of AMQP_URL that answers (worker.amqp.broker): the
        # loss must reach this loop, which knows the lock went with it.
        connection = await broker.connect(
            self._settings, "events", heartbeat=HEARTBEAT, subject=self._settings.amqp_exchange
        )
        self._lost = asyncio.Event()
        lost = self._lost
        connection.close_callbacks.add(lambda *_: lost.set())
        self.connection = connection
        return connection

    async def _session(self, connection: AbstractConnection) -> None:
        settings = self._settings
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.declare_exchange(
            settings.amqp_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_queue(
            settings.events_unrouted_queue,
            durable=True,
            arguments={"x-queue-type": settings.amqp_queue_type},
        )
        publisher = Publisher(channel, exchange, settings.events_unrouted_queue)
        self.running = True
        await self._forward(publisher)  # what a lost connection left: in hand, then the rest
        lock = Lock(connection, settings.events_lock_name)
        standby = False
        while not self._stopping.is_set():
            self._check_connection()
            if not await lock.take():
                if not standby:
                    log.info("events.standby", lock=settings.events_lock_name)
                    self._set_active(False)
                    standby = True
                await self._pause(LOCK_RETRY)
                continue
            standby = False
            self._set_active(True)
            while not self._stopping.is_set():
                self._check_connection()
                if not await lock.held():
                    log.warning("events.lock_lost", lock=settings.events_lock_name)
                    self._set_active(False)
                    break
                if wait := await self._poll(publisher):
                    await self._pause(wait)
        await self._forward(publisher)

    async def _poll(self, publisher: Publisher) -> float:
        """One poll and its batch; returns how long to wait before the next one.

        A full page (``EVENTS_BATCH_SIZE`` events, or ``PAGE_CAP`` = 100, the most SCX
        serves) is followed by the next poll at once (the pacer spaces the calls), a short
        one by ``EVENTS_POLL_INTERVAL``; while polls or acknowledgements fail, the
        wait doubles from ``FAILURE_WAITS[0]`` up to ``FAILURE_WAITS[1]`` seconds.
        """
        interval = self._settings.events_poll_interval
        if not await self._publish_blocked(publisher):
            return self._failed(interval)  # every poll would be a delivery spent for nothing
        if not await self._acknowledge():
            return self._failed(interval)  # no new batch before the old one is acked
        limit = self._settings.events_batch_size
        structlog.contextvars.clear_contextvars()  # the client binds ``attempt`` per call
        # One trace per poll: its GET, the downloads and every publish are children.
        with tracing.new_trace("poll scx events", **{"messaging.batch.limit": limit}):
            try:
                items = await self._client.poll_events(limit)
            except (RetryLater, RequestRejected) as exc:
                metrics.events_poll_failed(exc)
                log.warning("events.poll_failed", error=str(exc))
                return self._failed(interval)
            self._failures = 0
            metrics.events_poll_succeeded(self._settings.events_lock_name)
            tracing.annotate(**{"messaging.batch.message_count": len(items)})
            if items:
                log.info("events.polled", count=len(items), limit=limit)
            self._items, self._seen = deque(items), set()
            await self._forward(publisher)
        # SCX serves at most PAGE_CAP a page: one that long is full even if we asked for more.
        return 0.0 if len(items) >= min(limit, PAGE_CAP) else interval

    def _failed(self, interval: float) -> float:
        first, longest = FAILURE_WAITS
        wait: float = min(longest, first * 2.0**self._failures)
        self._failures += 1
        return max(interval, wait)

    async def _forward(self, publisher: Publisher) -> None:
        """Decode every item of the page, fetch what replies need, publish in order, ack.

        What a lost connection interrupts stays: the events in hand are published again and
        the items not looked at yet are taken up on the next connection, before a new poll.

        A reply with files is published as soon as its files are in the spool, before the
        next item is looked at: the files of one reply at most are held at a time (each up
        to ``spool.MEMORY_THRESHOLD`` in memory, the rest on disk).
        """
        while self._items:
            planned = await self._plan(self._items[0], self._seen)
            self._items.popleft()
            if planned is None:
                continue
            self._in_hand.append(planned)
            if planned.files:
                await self._finish(publisher, acknowledge=False)
        await self._finish(publisher)

    async def _plan(self, item: object, seen: set[str]) -> Planned | None:
        """What one polled item becomes; None for one without an id, a repeat, or a reply
        whose file could not be fetched now (SCX delivers those again)."""
        decoded = decode(item)
        metrics.event_polled(decoded.type)
        label = event_type_label(decoded.type)
        if isinstance(decoded, NoId):
            metrics.event_without_id()
            log.warning("events.without_id", reason=decoded.reason, type=label)
            return None
        if decoded.id in seen:
            return None  # the same event twice in one page: once is enough
        seen.add(decoded.id)
        match decoded:
            case Unmappable():
                log.warning(
                    "events.unmappable",
                    event_id=decoded.id,
                    type=label,
                    kind=decoded.kind,
                    reason=decoded.summary,
                )
                message = unmappable_message(decoded)
                return Planned(decoded.id, decoded.type, None, [message], unrouted=True)
            case SellerEvent(reply=TicketReply() as reply):
                return await self._fetch(decoded, reply)
            case _:
                return Planned(decoded.id, decoded.type, decoded.created, [other_message(decoded)])

    async def _fetch(self, event: SellerEvent, reply: TicketReply) -> Planned | None:
        """Download a reply's files into the spool; None if one kept failing (not acked).

        SCX delivers an event at most 10 times: at the ``EVENTS_DELIVERY_TRIES``-th delivery
        whose download failed, the reply goes out with that file marked not delivered.
        """
        outcomes: list[FileOutcome] = []
        files: list[Spooled] = []
        tries: int | None = None  # failed deliveries so far, once one failed this time
        try:
            for attachment in reply.files():
                try:
                    got = await self._download(reply, attachment.filename)
                except RetryLater as exc:
                    if tries is None:
                        tries = await self._tries.failed(event.id)
                    if not self._tries.exhausted(tries):
                        raise
                    detail = _not_delivered(reply, attachment.filename, exc, tries)
                    log.error(
                        "events.attachment_not_delivered",
                        event_id=event.id,
                        ticket_id=reply.ticket_id,
                        filename=attachment.filename,
                        deliveries=tries,
                        error=str(exc),
                        detail="the reply is published without this file (SCX gives an event "
                        f"up after {SCX_MAX_DELIVERIES} deliveries); fetch it later by "
                        "sellerId, ticketId and filename",
                    )
                    metrics.event_attachment_not_delivered(event.type)
                    outcomes.append(FileOutcome(attachment, unavailable=detail))
                    continue
                if isinstance(got, Unavailable):
                    log.warning(
                        "events.attachment_unavailable",
                        event_id=event.id,
                        ticket_id=reply.ticket_id,
                        filename=attachment.filename,
                        **got.detail,
                    )
                    outcomes.append(FileOutcome(attachment, unavailable=got.detail))
                else:
                    files.append(got)
                    outcomes.append(FileOutcome(attachment, file=got))
        except RetryLater as exc:
            for file in files:
                file.close()
            log.warning(
                "events.attachment_failed",
                event_id=event.id,
                ticket_id=reply.ticket_id,
                error=str(exc),
                deliveries=tries,
                detail="left unacknowledged; SCX delivers it again",
            )
            return None
        except BaseException:
            for file in files:
                file.close()
            raise
        messages = reply_messages(event, reply, outcomes, self._settings.events_ticket_reply_key)
        return Planned(event.id, event.type, event.created, messages, files=files)

    async def _download(self, reply: TicketReply, filename: str) -> Spooled | Unavailable:
        return await self._client.download_attachment(
            reply.seller_id,
            reply.ticket_id,
            filename,
            max_bytes=self._settings.attachment_max_bytes,
            directory=self._spool,
        )

    async def _finish(self, publisher: Publisher, *, acknowledge: bool = True) -> None:
        """Publish the batch in hand, settle each event, acknowledge (unless told not to:
        acknowledgements are sent 100 at a time); ``BrokerLost`` if the broker did not
        answer for some (they stay in hand for the next connection)."""
        if self._in_hand:
            refused: list[Planned] = []
            self._in_hand = self._settle(
                self._in_hand,
                await publisher.publish_all(
                    [(m, p.unrouted) for p in self._in_hand for m in p.messages]
                ),
                refused,
            )
            for planned in refused:
                await self._refused(publisher, planned)
        if acknowledge:
            await self._acknowledge()
        if self._in_hand:
            raise BrokerLost(f"{len(self._in_hand)} events published without an answer")

    def _settle(
        self, batch: list[Planned], results: list[Result], refused: list[Planned]
    ) -> list[Planned]:
        """The one place that decides each event's fate; returns the events kept in hand,
        and adds those the broker refused to ``refused`` (``_refused`` decides on them)."""
        kept: list[Planned] = []
        at = 0
        for planned in batch:
            mine = results[at : at + len(planned.messages)]
            at += len(planned.messages)
            if Result.FAILED in mine:
                kept.append(planned)
                continue
            if Result.NACKED in mine:
                refused.append(planned)
                continue
            planned.close()
            label = event_type_label(planned.type)
            unrouted = mine.count(Result.UNROUTED)
            for _ in range(unrouted):
                metrics.event_unrouted(
                    planned.type, "unmappable" if planned.unrouted else "unroutable"
                )
            metrics.event_published(planned.type, planned.created)
            self._to_ack.append((planned.event_id, planned.type))
            log.info(
                "events.published",
                event_id=planned.event_id,
                type=label,
                messages=len(mine),
                unrouted=unrouted,
            )
        return kept

    async def _refused(self, publisher: Publisher, planned: Planned) -> None:
        """The broker refused a message of ``planned``: left for SCX to deliver again until
        ``EVENTS_DELIVERY_TRIES`` deliveries, then a copy in the unrouted queue."""
        tries = await self._tries.failed(planned.event_id)
        label = event_type_label(planned.type)
        if not self._tries.exhausted(tries):
            planned.close()
            log.warning(
                "events.refused",
                event_id=planned.event_id,
                type=label,
                deliveries=tries,
                detail="the broker refused a message; left unacknowledged in SCX",
            )
            return
        results = [await publisher.refused_copy(out, tries=tries) for out in planned.messages]
        if Result.FAILED in results:
            self._in_hand.append(planned)  # published again on the next connection
        elif Result.NACKED in results:
            self._blocked.append(planned)
            if planned.event_id not in self._unpublishable:
                self._unpublishable.add(planned.event_id)
                metrics.event_unpublishable(planned.type)
            log.error(
                "events.unpublishable",
                event_id=planned.event_id,
                type=label,
                deliveries=tries,
                detail=f"the broker refused every copy, even to the unrouted queue; SCX gives "
                f"an event up after {SCX_MAX_DELIVERIES} deliveries: no polls until it is "
                "published",
            )
        else:
            planned.close()
            metrics.event_unrouted(planned.type, "refused")
            metrics.event_published(planned.type, planned.created)
            self._to_ack.append((planned.event_id, planned.type))
            log.warning(
                "events.kept_refused",
                event_id=planned.event_id,
                type=label,
                deliveries=tries,
                queue=self._settings.events_unrouted_queue,
            )

    async def _publish_blocked(self, publisher: Publisher) -> bool:
        """Publish what nothing could publish before (as usual, else the unrouted copy);
        True when none is left, so that the next poll may go."""
        blocked, self._blocked = self._blocked, []
        for planned in blocked:
            results = await publisher.publish_all([(m, planned.unrouted) for m in planned.messages])
            if Result.FAILED in results:
                self._in_hand.append(planned)
                raise BrokerLost("publishes went unanswered")
            if Result.NACKED in results:
                await self._refused(publisher, planned)
                continue
            planned.close()
            metrics.event_published(planned.type, planned.created)
            self._to_ack.append((planned.event_id, planned.type))
            log.info("events.published", event_id=planned.event_id, messages=len(results))
        return not self._blocked

    async def _acknowledge(self) -> bool:
        """Acknowledge what the broker holds, 100 ids a call; True when none is left."""
        while self._to_ack:
            chunk = self._to_ack[:MAX_ACK_IDS]
            try:
                await self._client.ack_events([event_id for event_id, _ in chunk])
            except RetryLater as exc:
                log.warning("events.ack_failed", count=len(self._to_ack), error=str(exc))
                return False
            except RequestRejected as exc:
                # The ids themselves were refused: asking again would loop. SCX keeps the
                # events and delivers them again; they are published again, same message_id.
                log.error("events.ack_rejected", count=len(chunk), error=str(exc))
            else:
                metrics.events_acknowledged(event_type for _, event_type in chunk)
                log.info("events.acknowledged", count=len(chunk))
                await self._tries.forget(event_id for event_id, _ in chunk)
            del self._to_ack[: len(chunk)]
        return True

    def _check_connection(self) -> None:
        if self._lost.is_set():
            raise BrokerLost("the broker connection closed")

    async def _pause(self, seconds: float, *, connected: bool = True) -> None:
        """Wait ``seconds``, or less if stopping or (``connected``) the connection drops.

        Between connection attempts there is no connection to drop: ``_lost`` is still set
        from the one that was lost, so only stopping may cut that pause short.
        """
        events = (self._stopping, self._lost) if connected else (self._stopping,)
        waits = {asyncio.ensure_future(e.wait()) for e in events}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _set_active(self, active: bool) -> None:
        if active != self.active:
            log.info("events.poller_active" if active else "events.poller_inactive")
        self.active = active
        metrics.events_poller_active(self._settings.events_lock_name, active)


class Lock:
    """The exclusive queue ``EVENTS_LOCK_NAME``: the connection that declared it polls."""

    def __init__(self, connection: AbstractConnection, name: str) -> None:
        self._connection = connection
        self._name = name
        self._channel: AbstractChannel | None = None

    async def take(self) -> bool:
        """Declare the queue exclusively; False while another connection holds it."""
        channel = await self._connection.channel()
        try:
            await channel.declare_queue(self._name, exclusive=True)
        except aiormq.exceptions.ChannelLockedResource:
            return False  # the broker closed this channel; the next try opens another
        self._channel = channel
        return True

    async def held(self) -> bool:
        """Declare it again: still ours (or ours again), or taken by someone else."""
        if self._channel is None or self._channel.is_closed:
            return await self.take()
        try:
            await self._channel.declare_queue(self._name, exclusive=True)
        except aiormq.exceptions.ChannelLockedResource:
            self._channel = None
            return False
        return True


def _not_delivered(
    reply: TicketReply, filename: str, exc: RetryLater, tries: int
) -> dict[str, Any]:
    """A file of a reply published without it: what failed, and how to fetch it later."""
    return {
        "status": exc.detail.get("status"),
        "reason": "download_failed",
        "error": exc.reason,
        "deliveries": tries,
        "fetch": {
            "method": "GET",
            "path": ATTACHMENT_PATH,
            "sellerId": reply.seller_id,
            "ticketId": reply.ticket_id,
            "filename": filename,
        },
    }


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
