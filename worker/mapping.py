"""Turn a RabbitMQ message body into a validated ``Ticket``.

Input contract: the body is UTF-8 JSON holding one object, in one of two shapes.

1. A marketplace ticket event (CloudEvents-style structured JSON)::

       {"id"?, "type"?, "time"?,               envelope: optional, not checked
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
                            "url"?: str,            at most ONE source: an http(s) URL under
                            "content_base64"?: str  ATTACHMENT_ALLOWED_URLS, or the bytes as
                           }]}}                     standard base64; neither: metadata only

   Enum values match in any (ASCII) case and are sent upper case.

   An attachment with a source is uploaded after the ticket is created. It must declare a
   content type the upload accepts (text/plain, application/pdf, application/msword,
   application/vnd.ms-excel, the OOXML docx/xlsx types, image/*), and it is named in the
   ticket *and* the upload by one sanitised name matching ``^\\w+\\.\\w{1,10}$``, unique in the
   ticket (``Red Dot (1).png`` is ``Red_Dot_1_.png``; rules in ``worker.attachments.names``).
   Attachments without a source keep their name as sent. Whether the URL is allowed, the
   base64 decodes and the file fits is checked by ``worker.attachments.fetch_all`` before
   any SCX call.

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
(see ``load_mapper``), which replaces the shape detection. A mapping it returns is the API
shape, except that its ``attachment[]`` items may carry one source each, ``url`` or
``contentBase64`` (camelCase like ``contentType``), under the rules above.

Failures raise ``MalformedMessage`` (not a UTF-8 JSON object) with detail ``{"error": "..."}``,
or ``InvalidTicket`` with detail ``{"shape": "event"|"ticket"|"mapper", "errors": [{"loc": ...,
"msg": ..., "type": ...}]}``. ``loc`` is the dotted path in the sender's own terms
(``data.attachments.3.filename`` for an event, ``from.role`` for a ticket, ``""`` for the whole
value); beyond 20 errors the list is cut and ``"omitted": <count>`` added. Neither the summary
nor the detail quotes input values; only a mapper's own exception text is passed on (500 chars
at most).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import orjson
from pydantic import ValidationError

from worker.attachments import AttachmentSource, Decoded
from worker.attachments.content_types import ALLOWED_TEXT, allowed_type
from worker.attachments.names import NameRequest, UnusableName, assign_names
from worker.errors import InvalidTicket, MalformedMessage
from worker.models import MapperSource, Ticket, TicketAttachment, TicketEvent

Mapper = Callable[[dict[str, Any]], Ticket | Mapping[str, Any]]
"""Receives the decoded JSON object; returns a ``Ticket`` (metadata only) or a camelCase API
mapping (whose ``attachment[]`` items may carry ``url`` or ``contentBase64``)."""

Shape = Literal["event", "ticket", "mapper"]

_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
# A mapper's exception text may quote personal data or be huge; a header needs neither.
_MAX_MAPPER_MESSAGE = 500
# The detail becomes a message header: 1000 bad attachments must not make 2000 entries.
_MAX_ERRORS = 20


def decode_message(body: bytes, mapper: Mapper | None = None) -> Decoded:
    """Decode and validate one message body (see the module docstring for the contract).

    Returns the ticket to send and the files to upload to it (``Decoded.files``, in the
    ticket's order; empty when no attachment has a source). With ``mapper``, the decoded
    object goes to it instead of the shape detection. A ``Ticket`` it returns is used as is
    (metadata only); a mapping is validated as an API ticket whose ``attachment[]`` items may
    carry ``url`` or ``contentBase64``. Any ``Exception`` it raises becomes ``InvalidTicket``
    (shape ``mapper``, type ``mapper_error``).
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # str(exc) is orjson's message with a position; it never repeats the document.
        raise _malformed(f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        what = _JSON_TYPES[type(obj)]
        raise _malformed(f"body is {what}, not a JSON object")
    if mapper is not None:
        return _apply_mapper(mapper, obj)
    shape: Shape = "ticket" if "sellerId" in obj else "event"
    try:
        if shape == "ticket":
            # The API shape is metadata only: a "url" in its attachments is an unknown key.
            return Decoded(Ticket.model_validate(obj))
        data = TicketEvent.model_validate(obj).data
    except ValidationError as exc:
        raise _invalid(shape, _errors(exc)) from None
    sources = [(a.url, a.content_base64) for a in data.attachments or ()]
    return _with_files(data.to_ticket(), sources, "event")


def decode_ticket(body: bytes, mapper: Mapper | None = None) -> Ticket:
    """``decode_message(body, mapper).ticket``: the ticket alone, names already sanitised."""
    return decode_message(body, mapper).ticket


def _apply_mapper(mapper: Mapper, obj: dict[str, Any]) -> Decoded:
    try:
        result = mapper(obj)
        if isinstance(result, Ticket):
            return Decoded(result)
        ticket = Ticket.model_validate(result)
    except ValidationError as exc:
        # Also when the mapper builds a Ticket itself: str(exc) would quote the input values.
        raise _invalid("mapper", _errors(exc)) from None
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if len(text) > _MAX_MAPPER_MESSAGE:
            text = text[: _MAX_MAPPER_MESSAGE - 1] + "…"
        raise _invalid("mapper", [{"loc": "", "msg": text, "type": "mapper_error"}]) from exc
    return _with_files(ticket, _mapper_sources(result.get("attachment")), "mapper")


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
    ticket: Ticket, sources: list[tuple[str | None, str | None]], shape: Shape
) -> Decoded:
    """The ticket with upload names in place of the original ones, and its files.

    An attachment with a source must declare a type the API accepts and have a usable name
    (``worker.attachments.names``); it is named in the ticket by its upload name.
    """
    if not any(url or data for url, data in sources):
        return Decoded(ticket)
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
        names = assign_names(requests)
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
    return Decoded(ticket.model_copy(update={"attachment": renamed}), files)


_TYPE_MSG = f"an attachment with a source must have a type the API accepts: {ALLOWED_TEXT}"


def _join(where: str, index: int, rest: str) -> str:
    return ".".join(part for part in (where, str(index), rest) if part)


def _malformed(error: str) -> MalformedMessage:
    return MalformedMessage(error, {"error": error})


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


def load_mapper(spec: str) -> Mapper:
    """Import a mapper from ``"package.module:function"`` (the attribute may be dotted).

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
    return cast(Mapper, target)
