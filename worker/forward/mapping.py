"""Turn a RabbitMQ message (body, headers, content type) into a validated ``Ticket``.

Input contract: a CloudEvent in either content mode (``worker.forward.envelope`` decides which and
reads it): in structured mode the body is the whole event, in binary mode the body is its
``data`` and the attributes are ``ce-*`` / ``cloudEvents:*`` / ``cloudEvents_*`` headers. The
body is UTF-8 JSON holding one object, in one of two shapes.

1. A marketplace ticket event (structured mode shown; ``data`` may also come as
   ``data_base64``, and in binary mode the body is the ``data`` object alone)::

       {"id"?, "type"?, "time"?, ...,          envelope: optional, not checked
        "data": {
          "seller_id": str,                    ^[A-Za-z0-9_]{1,50}$ (no trailing newline)
          "ticket_id": str,                    1-256 chars
          "topic": str,                        QUESTION FEEDBACK DELIVERY RETURN REFUND INCIDENT
          "created_at": str,                   RFC 3339 date-time with Z or +hh:mm/-hh:mm
          "author": {"role": str,              BUYER SELLER CHANNEL; becomes "from"
                     "name"?: str},            at most 100 chars
          "subject": str, "message": str,      1-1024 chars each
          "reference"?: {"type": str,          order_id order_item_id offer channel_offer
                         "id": str},           (or ORDERID ...); id non-empty
          "reply_requested"?: bool,            default true
          "attachments"?: [{"filename": str,        1-256 chars; at most 10 items;
                            "content_type": str,    1-128 chars; becomes attachment/contentType
                            "url"?: str,            at most one source per item: a URL to
                            "content_base64"?: str  download, or the bytes inline
                           }]}}

   An attachment with a source is renamed, in the ticket and its upload alike, to one name
   the upload accepts, unique in the conversation (``worker.forward.attachments.names``: the
   sender's stem, then the message's discriminator); its files are in ``Decoded.files``.

   Enum values match in any (ASCII) case and are sent upper case.

2. An API ticket, recognised by a top-level ``sellerId`` key: the camelCase body of
   ``POST /v1/channel/ticket`` (``sellerId``, ``ticketId``, ``topic``, ``createdAt``,
   ``from: {role, name?}``, ``subject``, ``message``, ``reference?: {type, id}``,
   ``replyRequested?``, ``attachment?: [{filename, contentType}]``) under the same constraints,
   enums in exact upper case. It is sent as is, except that unknown keys are dropped: the API
   body carries schema fields only. This shape is metadata only: a ``url`` in its
   ``attachment`` items is an unknown key, ignored.

In both shapes unknown keys are ignored, nothing is coerced (``4711`` is not a string, ``"yes"``
not a boolean), ``createdAt`` is sent exactly as received, and ``null`` for ``name``,
``reference`` or ``attachment(s)`` means absent. A marketplace may plug in its own ``Mapper``
(see ``load_mapper``), which replaces the shape detection: it gets the decoded body and, if
it takes a second argument, the message headers. A mapping it returns is the API shape, except
that its ``attachment[]`` items may carry one source each, ``url`` or ``contentBase64``
(camelCase like ``contentType``), under the rules above.

Failures raise ``MalformedMessage`` (not a UTF-8 JSON object) with detail ``{"error": "..."}``,
or ``InvalidTicket`` with detail ``{"shape": "event"|"ticket"|"mapper"|"batch", "errors":
[{"loc": ..., "msg": ..., "type": ...}]}``. ``loc`` is the dotted path in the sender's own terms
(``data.attachments.3.filename`` for an event in either mode, ``from.role`` for a ticket,
``""`` for the whole value); beyond 20 errors the list is cut and ``"omitted": <count>`` added.
Neither the summary nor the detail quotes input values; only a mapper's own exception text is
passed on (500 chars at most). Both carry the CloudEvents ``id`` as ``event_id`` once known.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, cast

from pydantic import ValidationError

from worker.core.errors import InvalidTicket, MessageError
from worker.forward.attachments import AttachmentSource
from worker.forward.attachments.content_types import ALLOWED_TEXT, allowed_type
from worker.forward.attachments.names import NameRequest, UnusableName, assign_names
from worker.forward.envelope import MISSING, ContentMode, Envelope, read_envelope
from worker.forward.identity import MessageIdentity, message_identity
from worker.models import MapperSource, Ticket, TicketAttachment, TicketEvent

MapperResult = Ticket | Mapping[str, Any]
MessageMapper = Callable[[dict[str, Any], Mapping[str, Any]], MapperResult]
"""Receives the decoded body and the message headers (read-only); returns a ``Ticket``
(metadata only) or a camelCase API mapping (whose ``attachment[]`` items may carry ``url`` or
``contentBase64``)."""
BodyMapper = Callable[[dict[str, Any]], MapperResult]
"""The one-argument form: the decoded body only."""
Mapper = MessageMapper | BodyMapper

Shape = Literal["event", "ticket", "mapper"]

# A mapper's exception text may quote personal data or be huge; a header needs neither.
_MAX_MAPPER_MESSAGE = 500
# The detail becomes a message header: 1000 bad attachments must not make 2000 entries.
_MAX_ERRORS = 20


@dataclass(frozen=True, slots=True)
class Decoded:
    """A validated message: the ticket to send, where it came from, the files to upload."""

    ticket: Ticket
    event_id: str | None
    """The CloudEvents ``id``, when the message had one."""
    mode: ContentMode
    identity: MessageIdentity
    """Which message of its conversation this is (``worker.forward.identity``)."""
    files: tuple[AttachmentSource, ...] = ()
    """The files to upload to the ticket, in its order; empty when no attachment has a source."""


# The ticket, and the files to upload to it.
Sourced = tuple[Ticket, tuple[AttachmentSource, ...]]


def decode_message(
    body: bytes,
    *,
    headers: Mapping[str, Any] | None = None,
    content_type: str | None = None,
    mapper: MessageMapper | None = None,
    message_id: str | None = None,
) -> Decoded:
    """Decode and validate one message (see the module docstring for the contract).

    With ``mapper`` (made by ``message_mapper`` or ``load_mapper``), the decoded body and the
    headers go to it instead of the shape detection. A ``Ticket`` it returns is used as is
    (metadata only); a mapping is validated as an API ticket whose ``attachment[]`` items may
    carry ``url`` or ``contentBase64``. Any ``Exception`` it raises becomes ``InvalidTicket``
    (shape ``mapper``, type ``mapper_error``).

    ``message_id`` is the AMQP property, the second choice of the message's identity
    (``worker.forward.identity``); the identity's discriminator goes into every upload name.
    """
    headers = headers or {}
    envelope = read_envelope(body, headers, content_type)
    identity = message_identity(envelope.id, message_id, body)
    try:
        ticket, files = _to_ticket(envelope, headers, mapper, identity.discriminator)
    except MessageError as exc:
        exc.event_id = envelope.id
        raise
    return Decoded(ticket, envelope.id, envelope.mode, identity, files)


def _to_ticket(
    envelope: Envelope,
    headers: Mapping[str, Any],
    mapper: MessageMapper | None,
    discriminator: str,
) -> Sourced:
    obj = envelope.body
    if mapper is not None:
        # A view: the mapper cannot change the headers the DLQ copy will carry.
        return _apply_mapper(mapper, obj, MappingProxyType(dict(headers)), discriminator)
    shape: Shape = "ticket" if "sellerId" in obj else "event"
    try:
        if shape == "ticket":
            # The API shape is metadata only: a "url" in its attachments is an unknown key.
            return Ticket.model_validate(obj), ()
        event = {} if envelope.data is MISSING else {"data": envelope.data}
        data = TicketEvent.model_validate(event).data
    except ValidationError as exc:
        raise _invalid(shape, _errors(exc)) from None
    sources = [(a.url, a.content_base64) for a in data.attachments or ()]
    return _with_files(data.to_ticket(), sources, "event", discriminator)


def _apply_mapper(
    mapper: MessageMapper, obj: dict[str, Any], headers: Mapping[str, Any], discriminator: str
) -> Sourced:
    try:
        result = mapper(obj, headers)
        if isinstance(result, Ticket):
            return result, ()
        ticket = Ticket.model_validate(result)
    except ValidationError as exc:
        # Also when the mapper builds a Ticket itself: str(exc) would quote the input values.
        raise _invalid("mapper", _errors(exc)) from None
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > _MAX_MAPPER_MESSAGE:
            text = text[: _MAX_MAPPER_MESSAGE - 1] + "…"
        raise _invalid("mapper", [{"loc": "", "msg": text, "type": "mapper_error"}]) from exc
    sources = _mapper_sources(result.get("attachment"))
    return _with_files(ticket, sources, "mapper", discriminator)


def _mapper_sources(items: Any) -> list[tuple[str | None, str | None]]:
    # Ticket validation passed, so ``items`` is None or a sequence of attachment items.
    sources: list[tuple[str | None, str | None]] = []
    errors: list[dict[str, str]] = []
    for index, item in enumerate(items or ()):
        if not isinstance(item, Mapping):  # a TicketAttachment: metadata only
            sources.append((None, None))
            continue
        try:
            source = MapperSource.model_validate(item)
        except ValidationError as exc:
            errors += [{**e, "loc": _join("attachment", index, e["loc"])} for e in _errors(exc)]
            continue
        sources.append((source.url, source.content_base64))
    if errors:
        raise _invalid("mapper", errors)
    return sources


def _with_files(
    ticket: Ticket,
    sources: list[tuple[str | None, str | None]],
    shape: Shape,
    discriminator: str,
) -> Sourced:
    """The ticket with upload names in place of the original ones, and its files.

    An attachment with a source must declare a type the API accepts and have a usable name
    (``worker.forward.attachments.names``); it is named in the ticket by its upload name.
    """
    if not any(url or data for url, data in sources):
        return ticket, ()
    attachments = ticket.attachment or ()
    where = "data.attachments" if shape == "event" else "attachment"
    type_key = "content_type" if shape == "event" else "contentType"
    errors = [
        {"loc": _join(where, i, type_key), "msg": _TYPE_MSG, "type": "content_type"}
        for i, (a, (url, data)) in enumerate(zip(attachments, sources, strict=True))
        if (url or data) and not allowed_type(a.content_type)
    ]
    requests = [
        NameRequest(a.filename, a.content_type, uploaded=bool(url or data))
        for a, (url, data) in zip(attachments, sources, strict=True)
    ]
    try:
        names = assign_names(requests, discriminator)
    except UnusableName as exc:
        loc = _join(where, exc.index or 0, "filename")
        errors.append({"loc": loc, "msg": exc.reason, "type": "unusable_filename"})
        names = []
    if errors:
        raise _invalid(shape, sorted(errors, key=lambda e: e["loc"]))
    files = tuple(
        AttachmentSource(
            index=i,
            filename=name,
            original_filename=a.filename,
            content_type=a.content_type,
            kind="url" if url else "base64",
            url=url,
            content_base64=data,
        )
        for i, (a, name, (url, data)) in enumerate(zip(attachments, names, sources, strict=True))
        if url or data
    )
    renamed = tuple(
        TicketAttachment.model_construct(filename=name, content_type=a.content_type)
        for a, name in zip(attachments, names, strict=True)
    )
    return ticket.model_copy(update={"attachment": renamed}), files


_TYPE_MSG = f"an attachment with a source must have a type the API accepts: {ALLOWED_TEXT}"


def _join(where: str, index: int, rest: str) -> str:
    return ".".join(part for part in (where, str(index), rest) if part)


def message_mapper(mapper: Mapper) -> MessageMapper:
    """``mapper`` as a two-argument ``MessageMapper``, its signature read once, here.

    It takes the headers when it has a second positional parameter without a default, one
    named ``headers``, or ``*args``; otherwise it is called with the body alone (so
    ``def to_ticket(event, strict=True)`` keeps its default). Idempotent.
    """
    if _takes_headers(mapper):
        return cast(MessageMapper, mapper)
    body_only = cast(BodyMapper, mapper)

    def with_headers(obj: dict[str, Any], headers: Mapping[str, Any]) -> MapperResult:
        return body_only(obj)

    return with_headers


def _takes_headers(function: Callable[..., object]) -> bool:
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): the old form
        return False
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    if len(positional) < 2:
        return False
    second = positional[1]
    return second.default is inspect.Parameter.empty or second.name == "headers"


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"loc": ".".join(map(str, err["loc"])), "msg": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _invalid(shape: Shape, errors: list[dict[str, str]]) -> InvalidTicket:
    # A mapper may raise a hand-made ValidationError without any line items.
    errors = errors or [{"loc": "", "msg": "validation failed", "type": "value_error"}]
    first = errors[0]
    where = f"{first['loc']}: " if first["loc"] else ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    label = "mapper result" if shape == "mapper" else shape
    summary = f"invalid {label}: {where}{first['msg']}{more}"
    detail: dict[str, Any] = {"shape": shape, "errors": errors[:_MAX_ERRORS]}
    if len(errors) > _MAX_ERRORS:
        detail["omitted"] = len(errors) - _MAX_ERRORS
    return InvalidTicket(summary, detail)


def load_mapper(spec: str) -> MessageMapper:
    """Import a mapper from ``"package.module:function"`` (the attribute may be dotted).

    Returns it as a ``MessageMapper`` (see ``message_mapper``: its signature is read now).

    Raises ``ValueError`` naming the problem: a malformed spec, a module that is missing or fails
    to import, a missing attribute, or an attribute that is not callable.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path or ":" in attr_path:
        raise ValueError(f"mapper spec {spec!r} is not of the form 'package.module:function'")
    try:
        target: object = importlib.import_module(module_name)
    except Exception as exc:
        msg = f"mapper spec {spec!r}: cannot import module {module_name!r}: {exc}"
        raise ValueError(msg) from exc
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ValueError(f"mapper spec {spec!r}: {attr_path!r} not found") from None
    if not callable(target):
        raise ValueError(f"mapper spec {spec!r}: {attr_path!r} is not callable")
    return message_mapper(cast(Mapper, target))
