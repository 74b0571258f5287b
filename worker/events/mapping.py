"""SCX seller events -> marketplace messages: the events bridge's contract, with no I/O.

A polled item (``GET /v1/channel/event``) is ``{"id", "createdAt", "clientVersion", "type",
"event"}``. ``decode`` sorts it into one of three:

- ``NoId``: not an object, or no non-empty string ``id``. It cannot be acknowledged, so it
  is only logged and counted (SCX delivers it again after its visibility timeout);
- ``Unmappable`` (``kind`` ``malformed`` or ``invalid``): an ``id``, but a missing or bad
  ``type``/``createdAt``/``event``, ``event`` text that is not a JSON object, or a
  ``Seller:Ticket.Reply`` that fails ``TicketReply``. The bridge keeps the raw item in
  ``EVENTS_UNROUTED_QUEUE`` with ``x-error-kind``/``x-error-detail`` and acknowledges it;
- ``SellerEvent``: mappable. ``event`` may be an object or a JSON text holding one.

Messages (``Outgoing``), every one persistent with ``message_id``, ``timestamp``,
``content_type`` and the headers ``x-scx-event-id`` and ``x-scx-event-type``:

=====================  ===================================  ================================
event type             routing key                          body
=====================  ===================================  ================================
Seller:Ticket.Reply    ``ticket.replied.attachment``, one    the file's bytes; ``message_id``
                       per file, first                      ``<event id>/<filename>``
                       ``EVENTS_TICKET_REPLY_KEY``          ``reply_body``: a marketplace
                                                            ``ticket.replied`` event
any other              ``scx.`` + type, lower case, ``:``   ``{"id", "type", "time",
                       -> ``.``                             "source": "scx", "clientversion",
                                                            "data": <event unchanged>}``
=====================  ===================================  ================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from worker.amqp import headers as h
from worker.core.spool import Spooled
from worker.models import (
    Attachments,
    ContentType,
    Filename,
    Name,
    Role,
    SellerId,
    Text,
    TicketId,
)

REPLY_TYPE = "Seller:Ticket.Reply"
ATTACHMENT_KEY = "ticket.replied.attachment"
# A type becomes part of a routing key (at most 255 bytes): words of letters, digits, _ and -,
# joined by ':' or '.'; no AMQP wildcards, no spaces.
_TYPE = re.compile(r"[A-Za-z0-9_-]+(?:[:.][A-Za-z0-9_-]+)*", re.ASCII)
_MAX_TYPE = 200
_MAX_ERRORS = 20
JSON = "application/json"
# JTL's schema (``SellerEventList``) caps a page at 100 events: a page that long is full
# whatever ``EVENTS_BATCH_SIZE`` asked for, and the next poll goes at once.
PAGE_CAP = 100

ErrorKind = Literal["malformed", "invalid"]


def routing_key(event_type: str) -> str:
    """``Seller:Order.Shipping`` -> ``scx.seller.order.shipping``."""
    return "scx." + event_type.lower().replace(":", ".")


# --- date-times as JTL's models read them ---------------------------------------------------

# ``2019-07-01T12:43:23``, a space for the ``T``, fractions of a second, then ``Z``, ``+00:00``,
# ``+0000`` (what JTL's own serializer writes), ``+00`` or nothing at all.
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"
    r"(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)


def parse_date_time(value: object) -> datetime | None:
    """A date-time in any form JTL's models take for the fields the bridge reads; None if not.

    JTL's models parse with PHP's ``DateTime``, which reads every offset form above; a value
    without an offset is read as **UTC** (PHP would take the server's zone, which SCX does
    not name; UTC is what its examples use). Calendar errors (``2023-02-30``) are refused.
    """
    if not isinstance(value, str) or _DATE_TIME.fullmatch(value) is None:
        return None
    text = value.upper().replace(" ", "T")
    date, _, clock = text.partition("T")
    # fromisoformat reads 1 to 6 digits of a fraction; PHP keeps microseconds as well.
    clock = re.sub(r"\.(\d{6})\d+", r".\1", clock)
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}")
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def rfc3339(value: str) -> str:
    """``value`` as RFC 3339 (what consumers of the marketplace events parse): unchanged when
    it is already, else rewritten (``+0000`` -> ``+00:00``, no offset -> ``+00:00``)."""
    moment = parse_date_time(value)
    if moment is None:
        raise ValueError(f"not a date-time: {value!r}")
    if _RFC3339_FORM.fullmatch(value):
        return value
    return moment.isoformat()


_RFC3339_FORM = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def _date_time_field(value: str) -> str:
    try:
        return rfc3339(value)
    except ValueError:
        raise PydanticCustomError(
            "date_time",
            "Input should be a date-time such as 2019-07-01T12:43:23+00:00 (offsets Z, +00:00 "
            "or +0000; none is read as UTC)",
        ) from None


# A reply's ``createdAt``: every form ``parse_date_time`` reads, published as RFC 3339.
LenientCreatedAt = Annotated[str, Field(strict=True), AfterValidator(_date_time_field)]


def _true_if_null(value: Any) -> Any:
    return True if value is None else value


# --- Seller:Ticket.Reply ------------------------------------------------------------------


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) and value.isascii() else value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ReplyFrom(_Model):
    role: Annotated[Role, BeforeValidator(_upper)]
    name: Name | None = None


class ReplyAttachment(_Model):
    filename: Filename
    content_type: ContentType = Field(alias="contentType")


class TicketReply(_Model):
    """``Seller:Ticket.Reply`` (JTL's ``SellerEventTicketReply``), camelCase as SCX sends it.

    The Ticket's constraints (``worker.models``); ``from.role`` in any case (an unknown role
    is refused, as JTL's model does); ``message`` required; ``attachment`` 0 to 10 items
    (``null`` = none, more are refused); ``replyRequested`` a boolean, true when absent or
    ``null`` (JTL's models read ``null`` as absent); ``createdAt`` in any form
    ``parse_date_time`` reads, published as RFC 3339. Unknown keys are ignored.
    """

    seller_id: SellerId = Field(alias="sellerId")
    ticket_id: TicketId = Field(alias="ticketId")
    reply_requested: Annotated[StrictBool, BeforeValidator(_true_if_null)] = Field(
        default=True, alias="replyRequested"
    )
    created_at: LenientCreatedAt = Field(alias="createdAt")
    from_: ReplyFrom = Field(alias="from")
    message: Text
    attachment: Attachments[ReplyAttachment] | None = None

    def files(self) -> list[ReplyAttachment]:
        """The attachments, each filename once (a file is fetched and published once)."""
        seen: dict[str, ReplyAttachment] = {}
        for item in self.attachment or ():
            seen.setdefault(item.filename, item)
        return list(seen.values())


# --- decoding a polled item ------------------------------------------------------------------


@dataclass(frozen=True)
class NoId:
    """An item without a usable ``id``: it cannot be acknowledged."""

    reason: str
    type: object


@dataclass(frozen=True)
class Unmappable:
    """An item with an ``id`` that cannot become a marketplace message."""

    id: str
    type: object
    kind: ErrorKind
    summary: str
    detail: dict[str, Any]
    raw: bytes
    """The item as JSON, for the unrouted queue."""


@dataclass(frozen=True)
class SellerEvent:
    id: str
    type: str
    created_at: str
    client_version: object
    payload: dict[str, Any]
    reply: TicketReply | None = None

    @property
    def created(self) -> datetime:
        moment = parse_date_time(self.created_at)
        assert moment is not None  # decode() let only a readable createdAt through
        return moment


Decoded = NoId | Unmappable | SellerEvent


def decode(item: object) -> Decoded:
    """Sort one ``eventList`` item (see the module docstring)."""
    if not isinstance(item, dict):
        return NoId(f"an item of the event list is a {type(item).__name__}, not an object", None)
    event_id = item.get("id")
    event_type = item.get("type")
    if not isinstance(event_id, str) or not event_id.strip():
        return NoId("the event has no id", event_type)

    def unmappable(kind: ErrorKind, summary: str, detail: dict[str, Any]) -> Unmappable:
        raw = orjson.dumps(item, default=str)
        return Unmappable(event_id, event_type, kind, summary, detail, raw)

    problem = _envelope_problem(event_type, item.get("createdAt"))
    payload = _payload(item.get("event"))
    if problem is None and isinstance(payload, str):
        problem = payload
    if problem is not None or not isinstance(payload, dict):
        return unmappable("malformed", problem or "", {"error": problem})
    assert isinstance(event_type, str)
    created_at = rfc3339(str(item["createdAt"]))
    client_version = item.get("clientVersion")
    if event_type != REPLY_TYPE:
        return SellerEvent(event_id, event_type, created_at, client_version, payload)
    try:
        reply = TicketReply.model_validate(payload)
    except ValidationError as exc:
        return unmappable("invalid", *_invalid_reply(exc))
    return SellerEvent(event_id, event_type, created_at, client_version, payload, reply=reply)


def _envelope_problem(event_type: object, created_at: object) -> str | None:
    if not isinstance(event_type, str) or not event_type:
        return "the event has no type"
    if len(event_type) > _MAX_TYPE or not _TYPE.fullmatch(event_type):
        return "the event type cannot become a routing key"
    if not isinstance(created_at, str) or not _date_time(created_at):
        return "createdAt is missing or not a date-time"
    return None


def _payload(value: object) -> dict[str, Any] | str:
    """``event`` as an object (also from JSON text), or what is wrong with it."""
    if isinstance(value, str | bytes):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return f"event is text that is not JSON ({exc})"[:300]
    if not isinstance(value, dict):
        return "event is missing or not a JSON object"
    return value


def _invalid_reply(exc: ValidationError) -> tuple[str, dict[str, Any]]:
    """A one-line summary and the ``x-error-detail`` of a reply that fails ``TicketReply``."""
    errors = [
        {"loc": ".".join(str(p) for p in err["loc"]), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = errors[0] if errors else {"loc": "", "msg": "validation failed"}
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    detail: dict[str, Any] = {"errors": errors[:_MAX_ERRORS]}
    if len(errors) > _MAX_ERRORS:
        detail["omitted"] = len(errors) - _MAX_ERRORS
    return f"invalid ticket reply: {first['loc'] or 'event'}: {first['msg']}{more}", detail


def _date_time(value: str) -> bool:
    return parse_date_time(value) is not None


# --- the messages -------------------------------------------------------------------------------


@dataclass
class Outgoing:
    """One message to publish for an event. A file's bytes stay spooled until published."""

    routing_key: str
    body: bytes | Spooled = field(repr=False)
    message_id: str
    content_type: str
    headers: dict[str, Any]

    def payload(self) -> bytes:
        """The body in memory: a spooled file is read only now, one at a time."""
        if isinstance(self.body, bytes):
            return self.body
        return b"".join(self.body.chunks())


@dataclass(frozen=True)
class FileOutcome:
    """What fetching one attachment of a reply gave: the file, or why it is unavailable."""

    attachment: ReplyAttachment
    file: Spooled | None = None
    unavailable: dict[str, Any] | None = None


def _headers(event_id: str, event_type: str, **extra: Any) -> dict[str, Any]:
    return {h.SCX_EVENT_ID: event_id, h.SCX_EVENT_TYPE: event_type, **extra}


def other_message(event: SellerEvent) -> Outgoing:
    """Any type but a reply: the SCX event wrapped as a marketplace event."""
    body = {
        "id": event.id,
        "type": event.type,
        "time": event.created_at,
        "source": "scx",
        "clientversion": event.client_version,
        "data": event.payload,
    }
    return Outgoing(
        routing_key(event.type),
        orjson.dumps(body),
        event.id,
        JSON,
        _headers(event.id, event.type),
    )


def reply_body(event: SellerEvent, reply: TicketReply, files: list[FileOutcome]) -> bytes:
    """The marketplace ``ticket.replied`` event, mirroring the ``ticket.created`` contract."""
    author: dict[str, Any] = {"role": reply.from_.role.lower()}
    if reply.from_.name is not None:
        author["name"] = reply.from_.name
    attachments = []
    for outcome in files:
        entry: dict[str, Any] = {
            "filename": outcome.attachment.filename,
            "content_type": outcome.attachment.content_type,
        }
        if outcome.file is not None:
            entry |= {"size": outcome.file.size, "sha256": outcome.file.sha256}
        else:
            entry["unavailable"] = outcome.unavailable
        attachments.append(entry)
    return orjson.dumps(
        {
            "id": event.id,
            "type": "ticket.replied",
            "time": event.created_at,
            "source": "scx",
            "data": {
                "seller_id": reply.seller_id,
                "ticket_id": reply.ticket_id,
                "created_at": reply.created_at,
                "author": author,
                "message": reply.message,
                "reply_requested": reply.reply_requested,
                "attachments": attachments,
            },
        }
    )


def reply_messages(
    event: SellerEvent, reply: TicketReply, files: list[FileOutcome], reply_key: str
) -> list[Outgoing]:
    """Each fetched file first, then the reply itself (routing key ``EVENTS_TICKET_REPLY_KEY``)."""
    messages = []
    for outcome in files:
        if outcome.file is None:
            continue
        name = outcome.attachment.filename
        messages.append(
            Outgoing(
                ATTACHMENT_KEY,
                outcome.file,
                f"{event.id}/{name}",
                outcome.attachment.content_type,
                _headers(
                    event.id,
                    event.type,
                    seller_id=reply.seller_id,
                    ticket_id=reply.ticket_id,
                    filename=name,
                    sha256=outcome.file.sha256,
                ),
            )
        )
    body = reply_body(event, reply, files)
    messages.append(Outgoing(reply_key, body, event.id, JSON, _headers(event.id, event.type)))
    return messages


def unmappable_message(item: Unmappable) -> Outgoing:
    """The raw item for the unrouted queue, saying why it could not be mapped."""
    event_type = item.type if isinstance(item.type, str) else ""
    detail = orjson.dumps(item.detail).decode()[:4096]
    return Outgoing(
        "",
        item.raw,
        item.id,
        JSON,
        _headers(
            item.id,
            event_type[:_MAX_TYPE],
            **{
                h.ERROR_KIND: item.kind,
                h.ERROR_REASON: item.summary[:512],
                h.ERROR_DETAIL: detail,
            },
        ),
    )
