"""The dead-letter toolkit behind ``scx-forwarder dlq``: stats, list, replay, purge, export.

**What is in a DLQ.** ``<AMQP_QUEUE>.dlq`` holds the worker's own copies, with
``x-error-kind`` (``malformed``, ``invalid``, ``rejected``, ``exhausted``) and the other
``x-error-*`` / ``x-original-*`` headers, and the messages the *broker* dead-lettered
(over the work queue's delivery limit), which carry ``x-death`` and
``x-first-death-reason`` instead. Their kind here is ``delivery-limit``; any other broker
reason ``r`` is shown as ``broker-r`` (``broker-expired``, ...), no header at all as
``unknown``.

**How a queue is scanned without losing or reordering anything.** AMQP cannot peek, so
every command takes messages one by one with ``basic.get`` and ``no_ack=False`` on one
channel, and

- a message that is *not* acted upon stays unacked on that channel until the scan ends,
  so the next ``basic.get`` moves on to the next message; at the end one
  ``basic.nack(multiple=True, requeue=True)`` hands them all back at once, in their old
  order. Should the tool die instead, the broker returns them when the connection drops;
- a message that *is* acted upon is acked only after its effect is certain: for
  ``replay``, once the broker confirmed the copy in the work queue (publisher confirms,
  ``mandatory``); for ``purge``, the ack is the deletion. A replay killed between
  confirm and ack leaves that one message in both queues: **at most the message in
  flight is duplicated, none is lost**.

A scan covers the whole queue as it was when the scan began (the first ``get`` tells how
many messages that is), also with ``--limit``: a quorum queue puts returned messages
behind those still ready, so stopping early would move the unread rest ahead of the
returned ones. Messages dead-lettered during a scan, such as replayed ones that fail
again, are left for the next run; on a quorum queue they end up ahead of the returned
block (the order holds among the messages that were there).

One message is in flight at a time and no body is kept in memory (the broker holds the
unacked ones), so a large DLQ costs broker memory, not the tool's. It is not fast: on a
quorum queue every ``basic.get`` and every confirmed publish is a replicated write (here
about 3 ms and 2 ms), so a scan reads a few hundred messages a second and a replay moves
about half as many. A consumer with a prefetch would read faster, but mixing its pushes
with ``basic.get`` (needed once the prefetch is full of kept messages) returns the two
groups out of order on a quorum queue. A scan must end within
the broker's ``consumer_timeout`` (30 min by default) or the broker closes the channel
and everything unacked goes back, intact. Run one dlq command per DLQ at a time: two
scans would each see only part of the queue.

Every scan returns the messages it looked at, which counts as a delivery: a quorum DLQ
raises their ``x-delivery-count``. Harmless on RabbitMQ 3.x, where the DLQ has no
delivery limit; RabbitMQ 4.0-4.2 give every quorum queue a default limit of 20 and count
each return, so there the DLQ needs ``x-delivery-limit: -1`` (a policy) before it is
scanned often.
"""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any

import aio_pika
import aiormq
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from worker.amqp import broker
from worker.amqp import headers as h
from worker.amqp.copies import message_copy
from worker.amqp.headers import REPLAY_COUNT, STRIPPED_ON_REPLAY
from worker.core.errors import MessageError
from worker.core.settings import Settings
from worker.forward.envelope import read_envelope

# Header names a publisher might have put a credential under; blanked in list/export.
_SECRET_NAME = re.compile(r"authorization|password|secret|token|api[-_]?key", re.IGNORECASE)

Progress = Callable[[int, int, int], None]
"""Called after each scanned message with (scanned, total to scan, acted upon)."""


class DlqError(Exception):
    """The command cannot run (a queue missing, the broker refused a replayed copy)."""


@dataclass(frozen=True)
class Entry:
    """What the toolkit reads from one dead-lettered message."""

    message_id: str | None
    ticket_id: str | None
    kind: str
    reason: str
    dead_lettered_at: datetime | None
    replay_count: int

    def age(self, now: datetime) -> float | None:
        if self.dead_lettered_at is None:
            return None
        return max(0.0, (now - self.dead_lettered_at).total_seconds())


@dataclass(frozen=True)
class Filter:
    """Which messages a command acts on; ``None`` fields match everything."""

    kind: str | None = None
    ticket_id: str | None = None

    def __call__(self, entry: Entry) -> bool:
        return (self.kind is None or entry.kind == self.kind) and (
            self.ticket_id is None or entry.ticket_id == self.ticket_id
        )

    def __str__(self) -> str:
        parts = [f"kind={self.kind}"] if self.kind else []
        if self.ticket_id:
            parts.append(f"ticket-id={self.ticket_id}")
        return ", ".join(parts) or "all"


@dataclass
class Outcome:
    """What a command did: messages scanned, matching, selected (within ``--limit``) and
    acted upon (replayed, deleted, exported)."""

    scanned: int = 0
    matched: int = 0
    selected: int = 0
    acted: int = 0
    entries: list[Entry] = field(default_factory=list)


@dataclass
class KindStats:
    count: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None

    def add(self, when: datetime | None) -> None:
        self.count += 1
        if when is not None:
            self.oldest = when if self.oldest is None else min(self.oldest, when)
            self.newest = when if self.newest is None else max(self.newest, when)


# --- reading a dead-lettered message -------------------------------------------------


def describe(message: AbstractIncomingMessage) -> Entry:
    headers = message.headers or {}
    kind, reason = _kind_and_reason(headers)
    replays = headers.get(REPLAY_COUNT)
    return Entry(
        message_id=message.message_id,
        ticket_id=ticket_id_of(message.body, headers, message.content_type),
        kind=kind,
        reason=reason,
        dead_lettered_at=_dead_lettered_at(headers) or _aware(message.timestamp),
        replay_count=replays if isinstance(replays, int) else 0,
    )


def ticket_id_of(body: bytes, headers: Mapping[str, Any], content_type: str | None) -> str | None:
    """``ticket_id`` of an event's data (either CloudEvents mode) or ``ticketId`` of an API
    ticket, if the message has one."""
    try:
        envelope = read_envelope(body, headers, content_type)
    except MessageError:
        return None
    data = envelope.data
    found = data.get("ticket_id") if isinstance(data, dict) else None
    if found is None:
        found = envelope.body.get("ticketId")
    return found if isinstance(found, str) else None


def _kind_and_reason(headers: dict[str, Any]) -> tuple[str, str]:
    kind = _text(headers.get(h.ERROR_KIND))
    if kind:
        return kind, _text(headers.get(h.ERROR_REASON)) or ""
    broker_reason = _text(headers.get(h.FIRST_DEATH_REASON))
    if not broker_reason:
        return "unknown", "no x-error-kind or x-death header"
    queue = _text(headers.get(h.FIRST_DEATH_QUEUE)) or "?"
    if broker_reason == "delivery_limit":
        return "delivery-limit", f"returned to {queue} more often than its delivery limit"
    return f"broker-{broker_reason}", f"dead-lettered by the broker ({broker_reason}) from {queue}"


def _dead_lettered_at(headers: dict[str, Any]) -> datetime | None:
    ours = _text(headers.get(h.DEAD_LETTERED_AT))
    if ours:
        try:
            return _aware(datetime.fromisoformat(ours))
        except ValueError:
            pass
    deaths = headers.get(h.DEATH)
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        when = deaths[0].get("time")
        if isinstance(when, datetime):
            return _aware(when)
    return None


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


# --- a scan --------------------------------------------------------------------------


class Scan:
    """One pass over the DLQ on one channel; see the module docstring for the rules."""

    def __init__(
        self,
        settings: Settings,
        connection: AbstractConnection,
        channel: AbstractChannel,
        queue: AbstractQueue,
    ) -> None:
        self.settings = settings
        self.connection = connection
        self.channel = channel
        self.queue = queue
        self.total = 0
        # The newest message not acted upon (its nack with multiple=True returns all of
        # them), and the one before it, for when the caller acts on the newest.
        self._last_kept: AbstractIncomingMessage | None = None
        self._kept_before: AbstractIncomingMessage | None = None

    async def messages(self) -> AsyncGenerator[tuple[AbstractIncomingMessage, Entry]]:
        """Each message once, up to as many as the queue held when the scan began."""
        message = await self.queue.get(no_ack=False, fail=False)
        if message is None:
            return
        self.total = 1 + (message.message_count or 0)
        for seen in range(1, self.total + 1):
            self._kept_before, self._last_kept = self._last_kept, message  # see done_with
            yield message, describe(message)
            if seen == self.total:
                return
            following = await self.queue.get(no_ack=False, fail=False)
            if following is None:  # someone else took messages meanwhile
                return
            message = following

    async def done_with(self, message: AbstractIncomingMessage) -> None:
        """Ack ``message``: it leaves the DLQ for good."""
        await message.ack()
        if self._last_kept is message:
            self._last_kept = self._kept_before

    async def give_back(self) -> None:
        """Return every message still unacked, in one go, in their old order."""
        last, self._last_kept = self._last_kept, None
        if last is not None and not self.channel.is_closed:
            await last.nack(multiple=True, requeue=True)


@asynccontextmanager
async def scanning(settings: Settings) -> AsyncIterator[Scan]:
    """A scan of ``<AMQP_QUEUE>.dlq``; the messages not acted upon go back at the end."""
    connection = await broker.connect(settings, "dlq")
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue = await channel.declare_queue(settings.dead_letter_queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise DlqError(f"queue {settings.dead_letter_queue!r} does not exist") from None
        scan = Scan(settings, connection, channel, queue)
        try:
            yield scan
        finally:
            await scan.give_back()


# --- the commands --------------------------------------------------------------------


async def stats(settings: Settings) -> dict[str, KindStats]:
    """Messages by kind, with the oldest and newest dead-lettering time of each."""
    by_kind: dict[str, KindStats] = {}
    async with scanning(settings) as scan, aclosing(scan.messages()) as messages:
        async for _, entry in messages:
            by_kind.setdefault(entry.kind, KindStats()).add(entry.dead_lettered_at)
    return by_kind


async def list_entries(settings: Settings, match: Filter, limit: int = 0) -> Outcome:
    """The first ``limit`` matching messages (0: all); ``matched`` counts them all."""
    outcome = Outcome()
    async with scanning(settings) as scan, aclosing(scan.messages()) as messages:
        async for _, entry in messages:
            outcome.scanned += 1
            if match(entry):
                outcome.matched += 1
                if not limit or outcome.matched <= limit:
                    outcome.entries.append(entry)
    return outcome


async def replay(
    settings: Settings,
    match: Filter,
    *,
    limit: int = 0,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Outcome:
    """Move the first ``limit`` matches (0: all) back to the work queue: confirmed publish
    first, then ack. ``selected`` counts them, ``acted`` those moved (0 in a dry run)."""
    outcome = Outcome()
    async with scanning(settings) as scan:
        await _require_queue(scan.connection, settings.amqp_queue)
        async with aclosing(scan.messages()) as messages:
            async for message, entry in messages:
                outcome.scanned += 1
                if match(entry):
                    outcome.matched += 1
                    if not limit or outcome.selected < limit:
                        outcome.selected += 1
                        if not dry_run:
                            await _publish_to_work_queue(scan, message)
                            await scan.done_with(message)
                            outcome.acted += 1
                if progress is not None:
                    progress(outcome.scanned, scan.total, outcome.acted)
    return outcome


async def purge(settings: Settings, match: Filter) -> Outcome:
    """Delete the matching messages; everything else stays where it was."""
    outcome = Outcome()
    async with scanning(settings) as scan, aclosing(scan.messages()) as messages:
        async for message, entry in messages:
            outcome.scanned += 1
            if match(entry):
                outcome.matched += 1
                await scan.done_with(message)
                outcome.acted += 1
    return outcome


async def export(settings: Settings, out: IO[bytes], match: Filter | None = None) -> Outcome:
    """Write each (matching) message as one JSON line to ``out``; the DLQ keeps them all."""
    outcome = Outcome()
    match = match or Filter()
    async with scanning(settings) as scan, aclosing(scan.messages()) as messages:
        async for message, entry in messages:
            outcome.scanned += 1
            if match(entry):
                outcome.matched += 1
                outcome.acted += 1
                out.write(orjson.dumps(export_record(message, entry)) + b"\n")
    out.flush()
    return outcome


def export_record(message: AbstractIncomingMessage, entry: Entry) -> dict[str, Any]:
    """One message for offline reading: body (text, or base64 if not UTF-8), properties,
    headers (credential-like names blanked) and what the toolkit made of it."""
    try:
        body, encoding = message.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, encoding = base64.b64encode(message.body).decode("ascii"), "base64"
    properties = {
        "message_id": message.message_id,
        "correlation_id": message.correlation_id,
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "delivery_mode": int(message.delivery_mode) if message.delivery_mode else None,
        "priority": message.priority,
        "timestamp": _jsonable(message.timestamp),
        "expiration": _jsonable(message.expiration),
        "type": message.type,
        "app_id": message.app_id,
        "user_id": message.user_id,
        "reply_to": message.reply_to,
    }
    return {
        "kind": entry.kind,
        "reason": entry.reason,
        "ticket_id": entry.ticket_id,
        "dead_lettered_at": _jsonable(entry.dead_lettered_at),
        "replay_count": entry.replay_count,
        "body": body,
        "body_encoding": encoding,
        "properties": {k: v for k, v in properties.items() if v is not None},
        "headers": redacted(message.headers or {}),
    }


def redacted(headers: dict[str, Any]) -> dict[str, Any]:
    """Headers as JSON-able values, with credential-like header names blanked."""
    return {
        key: "***" if _SECRET_NAME.search(key) else _jsonable(value)
        for key, value in headers.items()
    }


def replay_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The message as it goes back to the work queue: dead-letter headers off, replay +1."""
    old = message.headers or {}
    headers = {k: v for k, v in old.items() if k not in STRIPPED_ON_REPLAY}
    replays = old.get(REPLAY_COUNT)
    headers[REPLAY_COUNT] = (replays if isinstance(replays, int) else 0) + 1
    return message_copy(message, headers)


async def _publish_to_work_queue(scan: Scan, message: AbstractIncomingMessage) -> None:
    try:
        await scan.channel.default_exchange.publish(
            replay_copy(message), routing_key=scan.settings.amqp_queue, mandatory=True
        )
    except aiormq.exceptions.DeliveryError as exc:
        raise DlqError(
            f"the broker did not take the replayed copy into {scan.settings.amqp_queue!r} "
            f"({type(exc).__name__}); the message stays in the DLQ"
        ) from None


async def _require_queue(connection: AbstractConnection, name: str) -> None:
    """Fail early if the work queue is missing (looked up on a channel of its own)."""
    probe = await connection.channel()
    try:
        await probe.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise DlqError(
            f"work queue {name!r} does not exist; start the worker once (it declares it)"
        ) from None
    finally:
        if not probe.is_closed:
            await probe.close()


def _jsonable(value: object) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
