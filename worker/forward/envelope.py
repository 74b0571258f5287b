"""CloudEvents over AMQP: which content mode a message uses, its ``id``, its ``data``.

A message is read in exactly one of these modes, decided by its content type and headers:

=============================================  =============================================
the message                                    is read as
=============================================  =============================================
content type ``application/cloudevents-batch   a batch: refused as ``invalid`` (below)
+json``
content type ``application/cloudevents+json``  **structured** (whatever the headers say)
other ``application/cloudevents+<format>``     ``malformed``: only the JSON format is read
a header ``ce-specversion`` or ``ce-id``, or   **binary**: the body is the event's ``data``,
the same with ``cloudEvents:`` or              the attributes are the headers
``cloudEvents_`` (any case)
anything else (``application/json``, none)     **structured**, today's shape: the body is the
                                               whole event (or an API ticket)
=============================================  =============================================

Header spellings: ``ce-`` is the RabbitMQ binding's (and the ``cloudevents`` SDK's
``rabbitmq.to_binary``), ``cloudEvents:`` and ``cloudEvents_`` the AMQP binding's
(``amqp.to_binary`` writes ``cloudEvents_``). A marker is needed because a plain JSON body
cannot tell ``data`` from a whole event; ``specversion`` is the attribute every binary
event carries, ``id`` the one a publisher that omits ``specversion`` still sends.

Only what the worker needs is read: ``id`` (logged as ``event_id``, echoed in outcome
events) and ``data``. Nothing else is required or checked: today's publishers send no
``source`` and maybe no ``specversion``, and ``type``/``time`` are not the worker's business
(the routing key already chose the event type). That is why the SDK's own decoders are not
used here: they build a ``CloudEvent``, which insists on ``source``, parses ``time`` and
turns a body that is not JSON into text silently. The SDK's names for the bindings are.

Structured events carry their data as ``data`` (JSON) or ``data_base64`` (base64 of UTF-8
JSON, as the SDK writes bytes); both at once is invalid, as the specification says.

**Batches are not accepted.** One message is one ack: a batch would be forwarded ticket by
ticket, and a batch half forwarded when the worker stops, or with one bad ticket among
good ones, has no honest settlement (the DLQ would hold tickets that were sent). Publish
one event per message; a batch is dead-lettered whole as ``invalid`` with a reason saying so.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from worker.core.errors import InvalidTicket, MalformedMessage

ContentMode = Literal["binary", "structured"]

# The SDK's own names (cloudevents.core: ``JSONFormat.CONTENT_TYPE``, ``rabbitmq.CE_PREFIX``,
# ``amqp.CE_PREFIX_COLON`` and ``_UNDERSCORE``), spelled out so that reading a message does not
# load the SDK, with ctypes and dateutil 3 MiB of every worker's memory;
# tests/forward/test_envelope.py checks that they agree.
STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
HEADER_PREFIXES: Final = ("ce-", "cloudEvents:", "cloudEvents_")
# Compared in lower case: brokers and clients are known to change the case of header names.
_PREFIXES_LOWER = tuple(prefix.lower() for prefix in HEADER_PREFIXES)
_BINARY_MARKERS = frozenset({"specversion", "id"})

# An id goes into every log line and every outcome event of its message: keep it bounded.
MAX_ID_CHARS = 256

_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()
"""``Envelope.data`` of a structured event that has neither ``data`` nor ``data_base64``."""


@dataclass(frozen=True, slots=True)
class Envelope:
    mode: ContentMode
    id: str | None
    """The CloudEvents ``id`` (a header in binary mode, the body's ``id`` in structured mode)."""
    body: dict[str, Any]
    """The body as decoded JSON: the whole event (structured) or its data (binary)."""
    data: object
    """The event's data: ``body`` in binary mode; ``data`` or decoded ``data_base64``."""


def read_envelope(body: bytes, headers: Mapping[str, object], content_type: str | None) -> Envelope:
    """Read ``body`` in its content mode; raise ``MalformedMessage`` or ``InvalidTicket``.

    The errors carry the event's ``id`` (``event_id``) whenever it was known before they
    were raised (always in binary mode).
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    attributes = binary_attributes(headers)
    binary = not media_type.startswith("application/cloudevents") and bool(
        _BINARY_MARKERS & attributes.keys()
    )
    event_id = _event_id(attributes.get("id")) if binary else None
    try:
        if media_type == BATCH_CONTENT_TYPE:
            raise _batch()
        if media_type.startswith("application/cloudevents") and media_type != (
            STRUCTURED_CONTENT_TYPE
        ):
            raise _malformed(
                f"content type {media_type} is not read: CloudEvents in the JSON format "
                f"({STRUCTURED_CONTENT_TYPE}) or binary mode only"
            )
        obj = _json_object(body)
        if binary:
            return Envelope("binary", event_id, obj, obj)
        event_id = _event_id(obj.get("id"))
        return Envelope("structured", event_id, obj, _structured_data(obj))
    except (MalformedMessage, InvalidTicket) as exc:
        exc.event_id = event_id
        raise


def binary_attributes(headers: Mapping[str, object]) -> dict[str, object]:
    """CloudEvents attributes found in message headers, by attribute name (lower case)."""
    attributes: dict[str, object] = {}
    for name, value in headers.items():
        lowered = name.lower()
        for prefix in _PREFIXES_LOWER:
            if lowered.startswith(prefix) and len(lowered) > len(prefix):
                attributes[lowered[len(prefix) :]] = value
                break
    return attributes


def _event_id(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    elif isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        return None
    return value if len(value) <= MAX_ID_CHARS else value[: MAX_ID_CHARS - 1] + "…"


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # str(exc) is orjson's message with a position; it never repeats the document.
        raise _malformed(f"body is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _malformed(f"body is {_JSON_TYPES[type(obj)]}, not a JSON object")
    return obj


def _structured_data(event: dict[str, Any]) -> object:
    if "data_base64" not in event:
        return event.get("data", MISSING)
    if "data" in event:
        raise _invalid_event("", "data and data_base64 exclude each other", "data_conflict")
    encoded = event["data_base64"]
    try:
        if not isinstance(encoded, str):
            raise TypeError
        raw = base64.b64decode(encoded, validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise _invalid_event("data_base64", "Input should be a base64 string", "base64") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        msg = "Input should be the base64 of UTF-8 JSON"
        raise _invalid_event("data_base64", msg, "json_invalid") from None


def _malformed(error: str) -> MalformedMessage:
    return MalformedMessage(error, {"error": error})


def _invalid_event(loc: str, msg: str, type_: str) -> InvalidTicket:
    where = f"{loc}: " if loc else ""
    return InvalidTicket(
        f"invalid event: {where}{msg}",
        {"shape": "event", "errors": [{"loc": loc, "msg": msg, "type": type_}]},
    )


def _batch() -> InvalidTicket:
    msg = (
        f"CloudEvents batches ({BATCH_CONTENT_TYPE}) are not accepted: "
        "publish one event per message"
    )
    return InvalidTicket(
        f"invalid batch: {msg}",
        {"shape": "batch", "errors": [{"loc": "", "msg": msg, "type": "batch_not_accepted"}]},
    )
