"""The forwarder: the one stateful loop between the work queue and the SCX API.

For each delivery: decode and validate (``worker.forward.mapping``), fetch the attachment files
(``worker.forward.attachments``), create the ticket and upload each file (``worker.scx``), then
settle in ``_settle``, the only place that acks, dead-letters or returns a message:

=====================  ============================================================
outcome                what happens to the message
=====================  ============================================================
API answered 2xx       ack (after its outcome event, see below); ``Forwarded``, or
                       ``Delivered`` for a ticket with files
``MessageError``       copy to ``<queue>.dlq`` (publisher-confirmed), then ack
``RetryLater``         copy to ``<queue>.retry.<N>s`` (confirmed), then ack; or, once
                       ``WORKER_RETRY_MAX_AGE`` has passed since its first failure, a
                       ``RetriesExhausted`` dead-letter (kind ``exhausted``)
``ShuttingDown``       nack + requeue (stopped while waiting to send: nothing sent); with
                       steps done, a confirmed copy with ``x-scx-progress`` to the work
                       queue, then ack (``_hand_back``)
``FatalError``         as ``ShuttingDown``; the worker drains and exits non-zero
anything else (a bug)  nack + requeue after 5 s; the delivery limit ends a loop
copy to DLQ/delay failed  nack + requeue after 5 s; tried again later, never lost
outcome event failed   nack + requeue after 5 s, as a failed copy
=====================  ============================================================

With ``WORKER_OUTCOME_EVENTS`` a forwarded or dead-lettered message is acked only after
its outcome event (``worker.forward.outcomes``) was confirmed by the broker; a delayed or returned
message has none.

Delivery is at-least-once: a crash between the API's 2xx and the ack, or a lost
connection in that window, makes the broker deliver the message again.

Conversations (``docs/guides/conversations.md``): ``ticketId`` names a conversation, so every
message is known by its identity (``worker.forward.identity``), bound to its log lines as
``message_id`` and put on its dead-lettered copy as ``x-scx-message-id``. A ``409`` to a ticket
call counts as "already created" only when ``sent_before`` says this message went out before;
on a first attempt the message is dead-lettered as ``rejected`` (``worker.forward.delivery``).
Messages of one conversation take turns in this process, earliest ``createdAt`` first
(``worker.forward.turns``).

Attachments (``worker.forward.delivery``): every file is fetched before the first SCX call, so a
source that can never work dead-letters the message as ``invalid`` with no ticket created; then
the ticket, then each file. What is done (``worker.forward.progress.Steps``) travels with every copy
of the message that leaves after the ticket exists (delay stage, DLQ, back to the work queue
on shutdown) in ``x-scx-progress``, and with ``WORKER_STATE_REDIS_URL`` also lives in Redis;
both are checked before each step, so a retry creates no ticket twice and uploads no file
twice. At most ``WORKER_ATTACHMENT_CONCURRENCY`` messages hold files (download to upload)
at once; their temporary files are removed whatever the outcome.

The delay stage keeps long outages out of memory: a message whose in-process retries
ran out waits in a delay queue (``WORKER_RETRY_DELAYS``, 10 s, 60 s, 600 s by default;
the n-th time the n-th delay, then the last one again) and comes back to the work queue
by itself. Two headers travel with it: ``x-retry-count`` (times delayed so far) and
``x-first-failure-at`` (ISO 8601, UTC), plus ``x-last-error`` for whoever looks.

Concurrency: the broker hands out at most ``AMQP_PREFETCH`` unacked messages; at most
``WORKER_CONCURRENCY`` of them are worked on at once.

Poison messages: a message that kills the process (a native crash, the OOM killer) is
returned by the broker together with every unacked message the process held, and the
quorum queue counts a delivery for each. If they came back together every time, the
innocent ones would reach ``AMQP_DELIVERY_LIMIT`` with the poison one. So a worker starts
*narrow*, with a prefetch of 1: messages that come back after a crash come first and are
worked through one at a time, each alone in the process, until the first fresh message
(``x-delivery-count`` 0) arrives; then it re-subscribes with ``AMQP_PREFETCH`` (a
consumer's prefetch cannot change in place). A crash loop thus returns only the poison
message, which alone reaches the delivery limit and the DLQ. ``stop()`` cancels the consumer,
returns what has not started, and gives in-flight messages ``WORKER_SHUTDOWN_GRACE``
seconds to finish (keep Kubernetes' ``terminationGracePeriodSeconds`` above it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import orjson
import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from worker.amqp import broker
from worker.amqp import headers as h
from worker.amqp.copies import message_copy
from worker.amqp.errors import BROKER_ERRORS
from worker.amqp.topology import Topology, declare_topology
from worker.core.errors import (
    EXIT_FAILED,
    EXIT_OK,
    FatalError,
    MessageError,
    RetriesExhausted,
    RetryLater,
    ShuttingDown,
)
from worker.core.settings import Settings
from worker.forward import outcomes
from worker.forward.attachments import clear_spool
from worker.forward.delivery import Delivered, Delivery, create_ticket
from worker.forward.identity import MessageIdentity, message_identity
from worker.forward.mapping import Mapper, decode_message, message_mapper
from worker.forward.outcomes import MessageFacts
from worker.forward.progress import Steps
from worker.forward.turns import Turns
from worker.obs import metrics, tracing
from worker.scx import Forwarded, ScxClient

log = structlog.get_logger(__name__)

# A message handed back after a failure of ours (the DLQ refused the copy, a bug) would be
# delivered straight back; holding it this long first keeps that from becoming a hot loop.
RETURN_DELAY = 5.0

# Seconds a consumer cancel may take on SIGTERM before the drain goes ahead without it.
CANCEL_TIMEOUT = 5.0

# Headers must fit an AMQP frame together with everything else; a ticket with hundreds
# of validation errors keeps its first ones and says so.
MAX_DETAIL_BYTES = 8 * 1024

# Headers of ours that must not travel into a copy: the broker's delivery count belongs
# to the original queue, and a retried message is no longer a dead-letter.
_NOT_COPIED = (h.DELIVERY_COUNT,)


@dataclass(frozen=True, slots=True)
class Delay:
    """Park the message in ``queue`` for ``seconds``, with these headers."""

    queue: str
    seconds: float
    headers: dict[str, Any]
    reason: str
    attempts: int


Outcome = Forwarded | Delivered | Delay | Exception


def delay_or_give_up(
    headers: dict[str, Any], later: RetryLater, settings: Settings, now: datetime
) -> Delay | RetriesExhausted:
    """Where a message goes whose in-process retries ran out: a delay queue, or the DLQ."""
    retries = headers.get(h.RETRY_COUNT)
    retries = retries if isinstance(retries, int) and retries >= 0 else 0
    first = _parse_time(headers.get(h.FIRST_FAILURE_AT)) or now
    age = (now - first).total_seconds()
    delays = settings.worker_retry_delays
    if not delays or age >= settings.worker_retry_max_age:
        return RetriesExhausted(
            later.attempts,
            later.reason,
            {**later.detail, "retries": retries, "firstFailureAt": _iso(first)},
            summary=(
                f"still failing after {retries} delays, {age:.0f} s after the first "
                f"failure (WORKER_RETRY_MAX_AGE): {later.reason}"
            )
            if retries
            else None,
        )
    seconds = delays[min(retries, len(delays) - 1)]
    return Delay(
        queue=settings.retry_queue(seconds),
        seconds=seconds,
        headers={
            h.RETRY_COUNT: retries + 1,
            h.FIRST_FAILURE_AT: _iso(first),
            h.LAST_ERROR: later.reason[:512],
        },
        reason=later.reason,
        attempts=later.attempts,
    )


class Forwarder:
    def __init__(
        self, settings: Settings, client: ScxClient, *, mapper: Mapper | None = None
    ) -> None:
        self._settings = settings
        self._client = client
        # The mapper's signature is read once, here, not per message.
        self._mapper = message_mapper(mapper) if mapper is not None else None
        self._outcome_source = outcomes.source(settings.amqp_queue)
        self._semaphore = asyncio.Semaphore(settings.worker_concurrency)
        self._file_slots = asyncio.Semaphore(settings.worker_attachment_concurrency)
        self._delivery = Delivery(settings, client)
        self._stopping = asyncio.Event()
        self._turns = Turns(self._stopping)
        self._in_flight: set[asyncio.Task[Any]] = set()
        self._topology: Topology | None = None
        self._consumer_tag: str | None = None
        self._narrow = settings.amqp_prefetch > 1
        self._consumer_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self.exit_code = EXIT_OK
        self.consuming = asyncio.Event()
        """Set once the consumer is registered (tests and readiness wait for it)."""
        self.connection: AbstractConnection | None = None
        """The broker connection while ``run`` holds one (readiness, the queue gauges)."""

    def stop(self, exit_code: int = 0) -> None:
        """Ask the worker to drain and return; the first non-zero exit code sticks."""
        if exit_code and not self.exit_code:
            self.exit_code = exit_code
        self._stopping.set()

    async def run(self) -> int:
        """Consume until ``stop()``; returns the process exit code."""
        settings = self._settings
        if removed := clear_spool():
            log.info("worker.spool_cleared", removed=removed)  # left by a crashed run
        connection = await broker.connect_robust(settings, "run")
        self.connection = connection
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await channel.set_qos(prefetch_count=1 if self._narrow else settings.amqp_prefetch)
            self._topology = await declare_topology(channel, settings)
            queue = self._topology.queue
            self._consumer_tag = await queue.consume(self._on_message)
            self.consuming.set()
            log.info(
                "worker.consuming",
                queue=settings.amqp_queue,
                broker=settings.amqp_url_redacted,
                prefetch=settings.amqp_prefetch,
                concurrency=settings.worker_concurrency,
            )
            await self._stopping.wait()
            self.consuming.clear()
            await self._cancel_consumer(connection)
            self._client.interrupt_waits()
            await self._drain()
        finally:
            await connection.close()
            await self._delivery.aclose()
        return self.exit_code

    async def _cancel_consumer(self, connection: AbstractConnection) -> None:
        """Stop deliveries; skipped while the connection is down, bounded while it is up.

        Stopped while the connection is down or being re-established: there is no consumer
        to cancel, the broker holds every unacked message already, and a cancel would wait
        for a reconnect that may never come (every node gone).
        """
        assert self._topology is not None
        if not connection.connected.is_set():
            log.warning("worker.cancel_skipped", why="the broker connection is down")
            return
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT), self._consumer_lock:
                if self._consumer_tag is not None:
                    await self._topology.queue.cancel(self._consumer_tag)
        except BROKER_ERRORS as exc:
            # Lost meanwhile: as above, the broker takes the consumer and its messages back.
            log.warning("worker.cancel_failed", error=f"{type(exc).__name__}: {exc}")

    async def _drain(self) -> None:
        grace = self._settings.worker_shutdown_grace
        pending = set(self._in_flight)
        log.info("worker.draining", in_flight=len(pending), grace_s=grace)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                # Their messages stay unacked; closing the channel returns them to the queue.
                log.warning("worker.drain_timeout", cancelled=len(late))
                await asyncio.wait(late)
        log.info("worker.stopped", exit_code=self.exit_code)

    async def _widen(self) -> None:
        """Leave the narrow start: re-subscribe with the full ``AMQP_PREFETCH``."""
        assert self._topology is not None
        queue, channel = self._topology.queue, self._topology.channel
        async with self._consumer_lock:
            if self._stopping.is_set() or self._consumer_tag is None:
                return
            try:
                # Messages already delivered stay ours to ack after the cancel.
                await queue.cancel(self._consumer_tag)
                self._consumer_tag = None
                await channel.set_qos(prefetch_count=self._settings.amqp_prefetch)
                self._consumer_tag = await queue.consume(self._on_message)
            except Exception as exc:
                # Without a consumer this process would idle forever: exit and let the
                # supervisor start a fresh one. Unacked messages go back to the queue.
                log.error("worker.resubscribe_failed", error=f"{type(exc).__name__}: {exc}")
                self.stop(EXIT_FAILED)
                return
        log.info("worker.prefetch_widened", prefetch=self._settings.amqp_prefetch)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._narrow and _delivery_count(message) == 0:
            self._narrow = False
            widen = asyncio.create_task(self._widen())
            self._background.add(widen)
            widen.add_done_callback(self._background.discard)
        async with self._semaphore:
            if self._stopping.is_set():
                await _return(message, "worker is stopping")
                return
            self._in_flight.add(task)
            metrics.started()
            try:
                with (
                    structlog.contextvars.bound_contextvars(
                        delivery_count=_delivery_count(message)
                    ),
                    tracing.consuming(self._settings.amqp_queue, message),
                ):
                    started = time.perf_counter()
                    facts = MessageFacts(message_id=message.message_id)
                    steps = Steps.from_headers(message.headers)
                    outcome = await self._process(message, facts, steps)
                    await self._settle(message, outcome, started, facts, steps)
            finally:
                self._in_flight.discard(task)
                metrics.finished()

    async def _process(
        self, message: AbstractIncomingMessage, facts: MessageFacts, steps: Steps
    ) -> Outcome:
        """Do what is left for this message; ``steps`` is updated as each step is done."""
        try:
            decoded = decode_message(
                message.body,
                headers=message.headers or {},
                content_type=message.content_type,
                mapper=self._mapper,
                message_id=message.message_id,
            )
            ticket = decoded.ticket
            _identify(facts, decoded.identity)
            steps.claim(decoded.identity)
            _learn(
                facts,
                event_id=decoded.event_id,
                ticket_id=ticket.ticket_id,
                seller_id=ticket.seller_id,
            )
            tracing.ticket(ticket.ticket_id, ticket.seller_id)
            again = sent_before(message, steps)
            conversation = (ticket.seller_id, ticket.ticket_id)
            async with self._turns.turn(conversation, ticket.created_at):
                if not decoded.files and not steps and not self._delivery.recording:
                    return await create_ticket(self._client, ticket, steps, sent_before=again)
                if not decoded.files:
                    return await self._delivery.deliver(decoded, steps, sent_before=again)
                async with self._file_slots:  # the files are held from download to upload
                    return await self._delivery.deliver(decoded, steps, sent_before=again)
        except MessageError as exc:
            if facts.identity is None:  # the message did not decode; its id may be known
                _learn(facts, event_id=exc.event_id)
                _identify(facts, message_identity(exc.event_id, message.message_id, message.body))
            return exc
        except Exception as exc:  # bad input must never take the worker down
            return exc

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        outcome: Outcome,
        started: float,
        facts: MessageFacts,
        steps: Steps | None = None,
    ) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        # What is done travels with every copy, so the next attempt (or a replay) resumes.
        progress = steps.header() if steps is not None else {}
        if isinstance(outcome, RetryLater):
            outcome = delay_or_give_up(
                message.headers or {}, outcome, self._settings, datetime.now(UTC)
            )
        match outcome:
            case Forwarded() | Delivered():
                await self._settle_forwarded(message, outcome, facts, duration_ms)
            case Delay():
                try:
                    await self._publish_copy(message, outcome.queue, outcome.headers | progress)
                except Exception as exc:
                    log.error("ticket.delay_failed", error=f"{type(exc).__name__}: {exc}")
                    await self._return_later(message, "delay publish failed")
                    return
                await _ack(message)
                metrics.delayed(outcome.reason)
                tracing.settled("delayed", attempts=outcome.attempts)
                log.warning(
                    "ticket.delayed",
                    delay_s=outcome.seconds,
                    retry_count=outcome.headers[h.RETRY_COUNT],
                    reason=outcome.reason,
                    attempts=outcome.attempts,
                    duration_ms=duration_ms,
                )
            case MessageError():
                try:
                    await self._dead_letter(message, outcome, progress, facts)
                except Exception as exc:
                    log.error(
                        "ticket.dead_letter_failed",
                        kind=outcome.kind,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                    await self._return_later(message, "dead-letter publish failed")
                    return
                error = outcome  # narrowed to MessageError, for the closure
                if not await self._announce(
                    lambda: outcomes.dead_lettered(facts, error, source=self._outcome_source)
                ):
                    await self._return_later(message, "outcome publish failed")
                    return
                await _ack(message)
                metrics.dead_lettered(outcome.kind, message.timestamp)
                tracing.settled(
                    "dead_lettered", outcome.summary, attempts=outcome.attempts, kind=outcome.kind
                )
                log.info(
                    "ticket.dead_lettered",
                    kind=outcome.kind,
                    reason=outcome.summary,
                    attempts=outcome.attempts,
                    duration_ms=duration_ms,
                )
            case ShuttingDown():
                await self._hand_back(message, "worker stopped before sending it", progress)
            case FatalError():
                log.critical("worker.fatal", error=str(outcome))
                await self._hand_back(message, "worker stopping on a fatal error", progress)
                self.stop(outcome.exit_code)
            case _:
                log.error(
                    "ticket.failed_unexpectedly",
                    error=f"{type(outcome).__name__}: {outcome}",
                    exc_info=outcome,
                )
                await self._return_later(message, "unexpected error")

    async def _settle_forwarded(
        self,
        message: AbstractIncomingMessage,
        outcome: Forwarded | Delivered,
        facts: MessageFacts,
        duration_ms: float,
    ) -> None:
        """The ticket (and its files) are in SCX: its outcome event, then the ack."""
        status, attempts = outcome.status, outcome.attempts
        fields: dict[str, Any] = {}
        if isinstance(outcome, Delivered):
            facts.uploaded_files[:] = outcome.files
            fields = {"files_uploaded": outcome.uploaded, "steps_skipped": outcome.skipped}
        # None: an earlier delivery created the ticket (x-scx-progress or the progress
        # record); 201 is the API's answer to a created ticket.
        announced = 201 if status is None else status
        if not await self._announce(
            lambda: outcomes.forwarded(
                facts, status=announced, attempts=attempts, source=self._outcome_source
            )
        ):
            await self._return_later(message, "outcome publish failed")
            return
        await _ack(message)
        metrics.forwarded(message.timestamp)
        tracing.settled("forwarded", attempts=attempts)
        log.info(
            "ticket.forwarded", status=status, attempts=attempts, **fields, duration_ms=duration_ms
        )

    async def _return_later(self, message: AbstractIncomingMessage, why: str) -> None:
        """Return the message after ``RETURN_DELAY`` seconds, or at once when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), RETURN_DELAY)
        await _return(message, why)
        tracing.settled("failed", why)

    async def _hand_back(
        self, message: AbstractIncomingMessage, why: str, progress: dict[str, str]
    ) -> None:
        """Return the message; with steps done, as a copy that carries them (confirmed)."""
        if progress:
            try:
                await self._publish_copy(message, self._settings.amqp_queue, progress)
            except Exception as exc:
                # The original goes back as it came: at-least-once, the steps done again.
                log.warning("ticket.progress_copy_failed", error=f"{type(exc).__name__}: {exc}")
            else:
                await _ack(message)
                log.info("ticket.returned", why=why, progress=progress[h.PROGRESS])
                tracing.settled("returned", why)
                return
        await _return(message, why)

    async def _announce(self, build: Callable[[], aio_pika.Message]) -> bool:
        """Publish the outcome event ``build`` makes (if enabled); False, logged, if the broker
        did not confirm it.

        An event no queue is bound for counts as published (see ``worker.forward.outcomes``).
        """
        if not self._settings.worker_outcome_events:
            return True
        assert self._topology is not None
        event = build()
        assert event.type is not None
        headers: dict[str, Any] = dict(event.headers or {})
        try:
            # Its own producer span under the consumer span: the marketplace's handler of
            # the outcome continues the trace that brought the ticket in.
            with tracing.publishing(self._settings.amqp_exchange, event.type, headers):
                event.headers = headers
                await self._topology.exchange.publish(event, routing_key=event.type, mandatory=True)
        except aiormq.exceptions.PublishError:
            metrics.outcome_published(event.type, routed=False)
            log.warning(
                "ticket.outcome_unroutable", type=event.type, exchange=self._settings.amqp_exchange
            )
            return True
        except Exception as exc:
            log.error(
                "ticket.outcome_failed", type=event.type, error=f"{type(exc).__name__}: {exc}"
            )
            return False
        metrics.outcome_published(event.type, routed=True)
        return True

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        error: MessageError,
        progress: dict[str, str],
        facts: MessageFacts,
    ) -> None:
        known = {
            name: value
            for name, value in (
                (h.MESSAGE_IDENTITY, facts.identity),
                (h.SELLER_ID, facts.seller_id),
                (h.TICKET_ID, facts.ticket_id),
            )
            if value is not None
        }
        await self._publish_copy(
            message,
            self._settings.dead_letter_queue,
            progress
            | known
            | {
                h.ERROR_KIND: error.kind,
                h.ERROR_REASON: error.summary[:512],
                h.ERROR_DETAIL: _detail_json(error.detail),
                h.ATTEMPTS: error.attempts,
                h.ORIGINAL_EXCHANGE: message.exchange or "",
                h.ORIGINAL_ROUTING_KEY: message.routing_key or "",
                h.ORIGINAL_QUEUE: self._settings.amqp_queue,
                h.DEAD_LETTERED_AT: _iso(datetime.now(UTC)),
            },
        )

    async def _publish_copy(
        self, message: AbstractIncomingMessage, queue: str, extra_headers: dict[str, Any]
    ) -> None:
        """Publish a copy of ``message`` into ``queue``; returns once the broker confirmed it.

        Raises if the broker refused it or could not route it (the queue is gone).
        """
        assert self._topology is not None
        headers = {k: v for k, v in (message.headers or {}).items() if k not in _NOT_COPIED}
        headers.update(extra_headers)
        with tracing.publishing("", queue, headers):
            copy = message_copy(message, headers)
            await self._topology.channel.default_exchange.publish(
                copy, routing_key=queue, mandatory=True
            )


def sent_before(message: AbstractIncomingMessage, steps: Steps) -> bool:
    """Whether an earlier attempt of this message may have reached SCX, so that a ``409`` to
    its ticket call may be read as "created by that attempt" (``worker.forward.delivery``).

    Yes when its progress says a ticket call went out unrefused (``x-scx-progress``, the
    record), when the broker delivers it again (a crash, a lost connection, a nack), or when
    it comes back from the delay stage. A ``dlq replay`` alone is not: what its earlier
    attempts did travels in its progress header.
    """
    retries = (message.headers or {}).get(h.RETRY_COUNT)
    delayed = isinstance(retries, int) and retries > 0
    return steps.attempted or steps.ticket or _delivery_count(message) > 0 or delayed


def _identify(facts: MessageFacts, identity: MessageIdentity) -> None:
    """Name the message on its outcome event and on every log line that follows."""
    facts.identity = identity.value
    structlog.contextvars.bind_contextvars(
        message_id=identity.value, message_id_source=identity.source
    )


def _learn(facts: MessageFacts, **ids: str | None) -> None:
    """Note the ids decoding found (``event_id``, ``ticket_id``, ``seller_id``; ``None`` is
    unknown) for the outcome event, and put them on every log line that follows."""
    known = {name: value for name, value in ids.items() if value is not None}
    for name, value in known.items():
        setattr(facts, name, value)
    structlog.contextvars.bind_contextvars(**known)


async def _ack(message: AbstractIncomingMessage) -> None:
    try:
        await message.ack()
    except Exception as exc:
        # The channel died after the work was done: the broker will deliver the message
        # again and it will be sent (or dead-lettered) twice. That is the at-least-once window.
        log.warning("ticket.ack_failed", error=f"{type(exc).__name__}: {exc}")


async def _return(message: AbstractIncomingMessage, why: str) -> None:
    """Hand the message back to the queue; on a dead channel the broker already has."""
    tracing.settled("returned", why)
    try:
        await message.nack(requeue=True)
    except Exception as exc:
        log.warning("ticket.return_failed", why=why, error=f"{type(exc).__name__}: {exc}")
    else:
        log.info("ticket.returned", why=why)


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How often the broker delivered this message before (quorum queues count it)."""
    count = (message.headers or {}).get(h.DELIVERY_COUNT)
    if isinstance(count, int):
        return count
    return 1 if message.redelivered else 0


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _parse_time(value: object) -> datetime | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _detail_json(detail: dict[str, Any]) -> str:
    """``detail`` as JSON text of at most ``MAX_DETAIL_BYTES``, dropping trailing errors."""
    text = orjson.dumps(detail).decode()
    key = "errors" if "errors" in detail else "errorList"
    items = list(detail.get(key) or [])
    while len(text) > MAX_DETAIL_BYTES and items:
        items = items[: len(items) // 2]
        text = orjson.dumps({**detail, key: items, "truncated": True}).decode()
    if len(text) > MAX_DETAIL_BYTES:
        text = orjson.dumps({"truncated": True}).decode()
    return text
