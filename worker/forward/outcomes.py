"""Outcome events: the marketplace learns what became of each message (``WORKER_OUTCOME_EVENTS``).

After a message is settled for good the forwarder publishes one event to ``AMQP_EXCHANGE``,
routing key = type:

- ``ticket.forwarded``: the API accepted the ticket (``ForwardedData``);
- ``ticket.dead_lettered``: the message is in the DLQ (``DeadLetteredData``).

Nothing is published for a message that is only delayed, or handed back to the queue.

The event is a CloudEvent in structured mode (content type ``application/cloudevents+json``),
written by the ``cloudevents`` SDK: ``specversion``, ``id`` (a fresh UUID), ``type``,
``source`` (``/scx-forwarder/<AMQP_QUEUE>``), ``time``, ``subject`` (the ticket id, when
known), ``datacontenttype`` and ``data``: the same envelope the marketplace publishes,
plus the attributes the specification requires. The AMQP properties say it again for
consumers that do not parse the body: ``message_id`` = the event's id, ``type``,
``correlation_id`` = the original message's ``message_id``, ``app_id`` ``scx-forwarder``.

Delivery is at-least-once, like the rest: the event is confirmed by the broker before the
original message is acked, and if it is not, the message is handed back and handled again
(which may send the ticket, or store its DLQ copy, a second time, and publish the outcome
again under a new id). Consumers deduplicate on ``data.message_identity`` and ``type``:
``ticketId`` names a conversation whose messages each get their own outcome, and
``message_identity`` names the message (``worker.forward.identity``: the CloudEvents ``id``,
else the AMQP ``message_id``, else ``sha256:`` and the body's digest).
An event no queue is bound for is dropped by the broker (counted and logged as
unroutable): outcomes are offered to whoever subscribed, and a missing subscriber must not
stop tickets from being forwarded; bind your queue before turning the option on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

import aio_pika
from pydantic import BaseModel, ConfigDict

from worker.core.errors import ErrorKind, MessageError
from worker.forward.envelope import STRUCTURED_CONTENT_TYPE

FORWARDED: Final = "ticket.forwarded"
DEAD_LETTERED: Final = "ticket.dead_lettered"
OutcomeType = Literal["ticket.forwarded", "ticket.dead_lettered"]
TYPES: Final[tuple[OutcomeType, ...]] = (FORWARDED, DEAD_LETTERED)


@dataclass(slots=True)
class MessageFacts:
    """What the forwarder learned about one message while handling it; its outcome says it."""

    message_id: str | None
    """The original message's AMQP ``message_id``."""
    identity: str | None = None
    """Which message of its conversation it is (``worker.forward.identity``)."""
    event_id: str | None = None
    """Its CloudEvents ``id``, when it had one."""
    ticket_id: str | None = None
    seller_id: str | None = None
    uploaded_files: list[str] = field(default_factory=list)
    """The upload names of the ticket's files in SCX, in order (those of earlier deliveries,
    known from ``x-scx-progress`` or the progress record, included); ``ticket.forwarded``
    reports them as ``files``."""


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    ticket_id: str | None
    """Null when the message never decoded into a ticket (``malformed``, ``invalid``)."""
    seller_id: str | None
    message_id: str | None
    """The original message's AMQP ``message_id`` (null if its publisher set none)."""
    event_id: str | None
    """The original message's CloudEvents ``id`` (null if it had none)."""
    message_identity: str | None
    """The message's identity within its conversation (``worker.forward.identity``)."""


class ForwardedData(_Data):
    """``data`` of ``ticket.forwarded``."""

    status: int
    """The HTTP status of the accepted ticket call."""
    attempts: int
    """Calls made for the ticket in this delivery."""
    files: list[str]
    """Attachment files uploaded for the ticket."""


class DeadLetteredData(_Data):
    """``data`` of ``ticket.dead_lettered``."""

    kind: ErrorKind
    """``x-error-kind`` of the DLQ copy."""
    reason: str
    """``x-error-reason`` of the DLQ copy."""


def source(queue: str) -> str:
    """The ``source`` of this worker's outcome events (a URI reference, per queue)."""
    return f"/scx-forwarder/{queue}"


def forwarded(facts: MessageFacts, *, status: int, attempts: int, source: str) -> aio_pika.Message:
    data = ForwardedData(
        ticket_id=facts.ticket_id,
        seller_id=facts.seller_id,
        message_id=facts.message_id,
        event_id=facts.event_id,
        message_identity=facts.identity,
        status=status,
        attempts=attempts,
        files=list(facts.uploaded_files),
    )
    return _message(FORWARDED, data, facts, source)


def dead_lettered(facts: MessageFacts, error: MessageError, *, source: str) -> aio_pika.Message:
    data = DeadLetteredData(
        ticket_id=facts.ticket_id,
        seller_id=facts.seller_id,
        message_id=facts.message_id,
        event_id=facts.event_id,
        message_identity=facts.identity,
        kind=error.kind,
        reason=error.summary[:512],
    )
    return _message(DEAD_LETTERED, data, facts, source)


def _message(type_: OutcomeType, data: _Data, facts: MessageFacts, source: str) -> aio_pika.Message:
    now = datetime.now(UTC)
    attributes: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "type": type_,
        "source": source,
        "time": now,
        "datacontenttype": "application/json",
    }
    if facts.ticket_id:
        attributes["subject"] = facts.ticket_id
    # Imported here: a worker without outcome events (the default) need not carry the SDK.
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    event = CloudEvent(attributes, data.model_dump(mode="json"))
    return aio_pika.Message(
        JSONFormat().write(event),
        content_type=STRUCTURED_CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event.get_id(),
        correlation_id=facts.message_id,
        timestamp=now,
        type=type_,
        app_id="scx-forwarder",
    )
