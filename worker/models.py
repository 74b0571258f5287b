"""The SCX ``Ticket`` (body of ``POST /v1/channel/ticket``) and the marketplace event it comes from.

Every constraint of JTL's Ticket schema is declared once below as an ``Annotated`` type and used
by both the API models (``Ticket`` ...) and the event models (``TicketEvent`` ...), so a bad value
is reported in the terms of whatever the sender sent: ``data.author.role`` for an event,
``from.role`` for an API ticket.

API models validate camelCase keys only (``sellerId``, ``from``, ``contentType``); event models
validate the event's snake_case keys. Everywhere, unknown keys are ignored and never sent, values
are not coerced (a number is not a string, ``"yes"`` is not a boolean), and models are frozen.
``null`` for an optional field (``from.name``, ``reference``, ``attachment``) counts as absent:
``Ticket.to_json`` leaves it out, as the API wants, while ``replyRequested`` must be a boolean.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    model_validator,
)
from pydantic import StringConstraints as Str
from pydantic_core import PydanticCustomError

Topic = Literal["QUESTION", "FEEDBACK", "DELIVERY", "RETURN", "REFUND", "INCIDENT"]
Role = Literal["BUYER", "SELLER", "CHANNEL"]
ReferenceType = Literal["OFFER", "CHANNELOFFER", "ORDERID", "ORDERITEMID"]

MAX_ATTACHMENTS = 10

# RFC 3339 ``date-time`` (section 5.6) with the offset made mandatory. ``[0-5]\d`` seconds: leap
# seconds are refused since the calendar check below (and most servers) cannot represent them.
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt](?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)


def _rfc3339(value: str) -> str:
    # The regex settles the syntax, fromisoformat the calendar (2023-02-30 matches the regex).
    # The string itself is returned untouched: it is sent byte for byte as received.
    if _RFC3339.fullmatch(value) is not None:
        try:
            datetime.fromisoformat(value.upper())
        except ValueError:
            pass
        else:
            return value
    raise PydanticCustomError(
        "rfc3339_date_time",
        "Input should be an RFC 3339 date-time with a UTC offset, e.g. 2023-11-07T05:31:56Z",
    )


# JSON Schema reads ``\w`` as ASCII; pydantic's Rust regex would read it as Unicode. Rust's
# ``$`` is end of text (never before a trailing newline), which a test pins down.
SellerId = Annotated[str, Str(strict=True, pattern=r"^[A-Za-z0-9_]{1,50}$")]
TicketId = Annotated[str, Str(strict=True, min_length=1, max_length=256)]
CreatedAt = Annotated[str, Str(strict=True), AfterValidator(_rfc3339)]
Name = Annotated[str, Str(strict=True, max_length=100)]
Text = Annotated[str, Str(strict=True, min_length=1, max_length=1024)]
ReferenceId = Annotated[str, Str(strict=True, min_length=1)]
Filename = Annotated[str, Str(strict=True, min_length=1, max_length=256)]
ContentType = Annotated[str, Str(strict=True, min_length=1, max_length=128)]
_A = TypeVar("_A", bound=BaseModel)
Attachments = Annotated[tuple[_A, ...], Field(max_length=MAX_ATTACHMENTS)]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class TicketFrom(_Model):
    role: Role
    name: Name | None = None


class TicketReference(_Model):
    type: ReferenceType
    id: ReferenceId


class TicketAttachment(_Model):
    filename: Filename
    content_type: ContentType = Field(alias="contentType")


class Ticket(_Model):
    """The API ticket. Validates camelCase keys (``Ticket.model_validate(api_dict)``)."""

    seller_id: SellerId = Field(alias="sellerId")
    ticket_id: TicketId = Field(alias="ticketId")
    topic: Topic
    created_at: CreatedAt = Field(alias="createdAt")
    from_: TicketFrom = Field(alias="from")
    subject: Text
    message: Text
    reference: TicketReference | None = None
    reply_requested: StrictBool = Field(default=True, alias="replyRequested")
    attachment: Attachments[TicketAttachment] | None = None

    def to_json(self) -> bytes:
        """The request body: camelCase, ``None`` fields left out, ``replyRequested`` always in."""
        # exclude_none (not exclude_unset): the default replyRequested=true is sent explicitly.
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


# Events spell enums loosely. Only ASCII is case-folded: str.upper() would turn "ıncıdent"
# (dotless i) into INCIDENT.
def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) and value.isascii() else value


_REFERENCE_TYPES: dict[str, ReferenceType] = {
    "order_id": "ORDERID",
    "orderid": "ORDERID",
    "order_item_id": "ORDERITEMID",
    "orderitemid": "ORDERITEMID",
    "offer": "OFFER",
    "channel_offer": "CHANNELOFFER",
    "channeloffer": "CHANNELOFFER",
}


def _reference_type(value: Any) -> Any:
    if isinstance(value, str) and value.isascii():
        return _REFERENCE_TYPES.get(value.lower(), value)
    return value


EventTopic = Annotated[Topic, BeforeValidator(_upper)]
EventRole = Annotated[Role, BeforeValidator(_upper)]
EventReferenceType = Annotated[ReferenceType, BeforeValidator(_reference_type)]


class Author(_Model):
    role: EventRole
    name: Name | None = None


class EventReference(_Model):
    type: EventReferenceType
    id: ReferenceId


# Where an attachment's bytes come from (worker.forward.attachments). Only its shape is checked
# here; the allow-list, the base64 alphabet and the content-type rules are checked before any
# download or SCX call, in worker.forward.mapping and worker.forward.attachments.fetch.
SourceUrl = Annotated[str, Str(strict=True, min_length=1, max_length=8192)]
Base64Text = Annotated[str, Str(strict=True, min_length=1)]


class _Source(_Model):
    """At most one source: ``url`` or ``content_base64``; neither means metadata only."""

    # repr=False: a pre-signed URL's query is a credential, base64 may be megabytes.
    url: SourceUrl | None = Field(default=None, repr=False)
    content_base64: Base64Text | None = Field(default=None, repr=False)

    @model_validator(mode="after")
    def _one_source(self) -> _Source:
        if self.url is not None and self.content_base64 is not None:
            raise PydanticCustomError(
                "one_source", "give at most one source: url or content_base64, not both"
            )
        return self


class EventAttachment(_Source):
    filename: Filename
    content_type: ContentType


class MapperSource(_Source):
    """The sources a mapper's camelCase ``attachment[]`` item may carry (forward.mapping)."""

    content_base64: Base64Text | None = Field(default=None, alias="contentBase64", repr=False)


class TicketEventData(_Model):
    """``data`` of a ``ticket.created`` event: the Ticket in snake_case, ``author`` for ``from``.

    ``topic`` and ``author.role`` match the API's enums case-insensitively; ``reference.type``
    also accepts ``order_id``, ``order_item_id``, ``offer``, ``channel_offer`` in any case;
    ``reply_requested`` defaults to true; ``attachments[].content_type`` is ``contentType``;
    ``attachments[].url`` / ``content_base64`` are sources, not part of the API ticket.
    """

    seller_id: SellerId
    ticket_id: TicketId
    topic: EventTopic
    created_at: CreatedAt
    author: Author
    subject: Text
    message: Text
    reference: EventReference | None = None
    reply_requested: StrictBool = True
    attachments: Attachments[EventAttachment] | None = None

    def to_ticket(self) -> Ticket:
        """The same ticket in API shape; no second validation, the types are the same."""
        ref = self.reference
        files = self.attachments
        return Ticket.model_construct(
            seller_id=self.seller_id,
            ticket_id=self.ticket_id,
            topic=self.topic,
            created_at=self.created_at,
            from_=TicketFrom.model_construct(role=self.author.role, name=self.author.name),
            subject=self.subject,
            message=self.message,
            reference=None
            if ref is None
            else TicketReference.model_construct(type=ref.type, id=ref.id),
            reply_requested=self.reply_requested,
            attachment=None
            if files is None
            else tuple(
                TicketAttachment.model_construct(filename=a.filename, content_type=a.content_type)
                for a in files
            ),
        )


class TicketEvent(_Model):
    """A CloudEvents-style envelope. ``id``/``type``/``time`` are optional and not checked:
    routing already chose the event type; only ``data`` matters."""

    id: Any = None
    type: Any = None
    time: Any = None
    data: TicketEventData
