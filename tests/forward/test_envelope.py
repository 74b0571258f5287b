"""CloudEvents content modes (worker.forward.envelope) via decode_message; the mapper's headers.

Messages are written by the ``cloudevents`` SDK wherever it writes them (its RabbitMQ and AMQP
bindings, binary and structured), so the worker is held to what real publishers send.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from cloudevents.core.bindings import amqp, rabbitmq
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from tests.support.imports import modules_loaded
from worker.core.errors import InvalidTicket, MalformedMessage, MessageError
from worker.forward.envelope import (
    BATCH_CONTENT_TYPE,
    HEADER_PREFIXES,
    MAX_ID_CHARS,
    STRUCTURED_CONTENT_TYPE,
    read_envelope,
)
from worker.forward.identity import MessageIdentity
from worker.forward.mapping import Decoded, Mapper, decode_message, load_mapper, message_mapper
from worker.models import Ticket

DATA: dict[str, Any] = copy.deepcopy(SEED_EVENT_DATA)
EXPECTED = Ticket.model_validate(SEED_TICKET)


def sdk_event(data: Any = None, **attributes: Any) -> CloudEvent:
    values = {"type": "ticket.created", "source": "/marketplace", "id": "evt-42"} | attributes
    return CloudEvent(values, DATA if data is None else data)


def decode(
    body: bytes,
    headers: Mapping[str, Any] | None = None,
    content_type: str | None = None,
    mapper: Mapper | None = None,
) -> Decoded:
    return decode_message(
        body,
        headers=headers,
        content_type=content_type,
        mapper=message_mapper(mapper) if mapper else None,
    )


def fails(
    error: type[MessageError],
    body: bytes,
    headers: Mapping[str, Any] | None = None,
    content_type: str | None = None,
) -> MessageError:
    with pytest.raises(error) as info:
        decode(body, headers, content_type)
    return info.value


# ---- binary mode ---------------------------------------------------------------------------


def test_binary_mode_as_the_sdk_writes_it_for_rabbitmq() -> None:
    message = rabbitmq.to_binary_event(sdk_event())
    assert "ce-specversion" in message.headers
    decoded = decode(message.body, message.headers, message.content_type)
    assert decoded == Decoded(EXPECTED, "evt-42", "binary", MessageIdentity("evt-42", "event"))


def test_binary_mode_as_the_sdk_writes_it_for_amqp() -> None:
    # cloudEvents_ prefix, time as an AMQP timestamp (an int), content type in a property.
    message = amqp.to_binary_event(sdk_event(datacontenttype="application/json"))
    assert "cloudEvents_id" in message.application_properties
    content_type = message.properties["content-type"]
    decoded = decode(message.application_data, message.application_properties, content_type)
    assert decoded == Decoded(EXPECTED, "evt-42", "binary", MessageIdentity("evt-42", "event"))


@pytest.mark.parametrize("prefix", ["ce-", "cloudEvents:", "cloudEvents_", "CE-", "cloudevents_"])
@pytest.mark.parametrize("marker", ["id", "specversion"])
def test_binary_mode_every_spelling_and_either_marker(prefix: str, marker: str) -> None:
    headers = {f"{prefix}{marker}": "evt-7" if marker == "id" else "1.0"}
    decoded = decode(orjson.dumps(DATA), headers, "application/json")
    assert decoded.mode == "binary"
    assert decoded.ticket == EXPECTED
    assert decoded.event_id == ("evt-7" if marker == "id" else None)


def test_binary_mode_needs_no_source_type_or_time() -> None:
    decoded = decode(orjson.dumps(DATA), {"ce-id": "only-an-id"})
    assert decoded == Decoded(
        EXPECTED, "only-an-id", "binary", MessageIdentity("only-an-id", "event")
    )


def test_binary_mode_ignores_time_and_other_attributes() -> None:
    headers = {"ce-id": "e", "ce-time": "not a time", "ce-specversion": "0.3", "ce-x": b"\xff"}
    assert decode(orjson.dumps(DATA), headers).ticket == EXPECTED


def test_binary_id_in_bytes_or_as_a_number_is_read_as_text() -> None:
    assert decode(orjson.dumps(DATA), {"ce-id": b"evt-b"}).event_id == "evt-b"
    assert decode(orjson.dumps(DATA), {"cloudEvents:id": 17}).event_id == "17"


def test_a_long_id_is_cut() -> None:
    event_id = decode(orjson.dumps(DATA), {"ce-id": "x" * 10_000}).event_id
    assert event_id is not None
    assert len(event_id) == MAX_ID_CHARS


def test_binary_body_is_the_data_so_its_errors_say_data() -> None:
    bad = DATA | {"author": {"role": "pilot"}}
    error = fails(InvalidTicket, orjson.dumps(bad), {"ce-id": "evt-9"})
    assert error.detail["shape"] == "event"
    assert [e["loc"] for e in error.detail["errors"]] == ["data.author.role"]
    assert error.event_id == "evt-9"


def test_binary_body_may_be_an_api_ticket() -> None:
    assert decode(orjson.dumps(SEED_TICKET), {"ce-id": "e"}).ticket == EXPECTED


def test_a_whole_event_sent_as_binary_data_is_invalid_not_guessed() -> None:
    # With a ce- marker the body *is* data; an envelope there is a publisher's mistake.
    event = {"id": "e", "data": DATA}
    error = fails(InvalidTicket, orjson.dumps(event), {"ce-specversion": "1.0"})
    assert {e["loc"] for e in error.detail["errors"]} >= {"data.seller_id", "data.ticket_id"}


def test_malformed_binary_body_still_names_its_event() -> None:
    error = fails(MalformedMessage, b"\xff not json", {"ce-id": "evt-m"})
    assert error.event_id == "evt-m"
    assert "not valid UTF-8 JSON" in error.summary
    assert fails(MalformedMessage, b"[1]", {"ce-id": "e"}).summary == (
        "body is an array, not a JSON object"
    )


def test_headers_without_a_marker_leave_the_body_structured() -> None:
    # ce-type alone (or unrelated headers) does not make the body the data.
    event = {"id": "evt-s", "data": DATA}
    for headers in ({"ce-type": "ticket.created"}, {"x-retry-count": 1}, {"ce-": "1.0"}):
        assert decode(orjson.dumps(event), headers) == Decoded(
            EXPECTED, "evt-s", "structured", MessageIdentity("evt-s", "event")
        )


# ---- structured mode -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/cloudevents+json",
        "application/cloudevents+json; charset=utf-8",
    ],
)
def test_structured_mode_with_or_without_its_content_type(content_type: str | None) -> None:
    message = rabbitmq.to_structured_event(sdk_event())
    decoded = decode(message.body, message.headers, content_type)
    assert decoded == Decoded(EXPECTED, "evt-42", "structured", MessageIdentity("evt-42", "event"))


def test_structured_content_type_wins_over_binary_headers() -> None:
    message = rabbitmq.to_structured_event(sdk_event())
    headers = {"ce-id": "from-a-header", "ce-specversion": "1.0"}
    decoded = decode(message.body, headers, message.content_type)
    assert decoded == Decoded(EXPECTED, "evt-42", "structured", MessageIdentity("evt-42", "event"))


def test_structured_data_base64_as_the_sdk_writes_bytes() -> None:
    message = rabbitmq.to_structured_event(sdk_event(data=orjson.dumps(DATA)))
    assert b"data_base64" in message.body
    decoded = decode(message.body, message.headers, message.content_type)
    assert decoded == Decoded(EXPECTED, "evt-42", "structured", MessageIdentity("evt-42", "event"))


def test_todays_events_without_source_or_specversion_still_decode() -> None:
    body = orjson.dumps({"data": DATA})
    identity = MessageIdentity(f"sha256:{hashlib.sha256(body).hexdigest()}", "body")
    assert decode(body) == Decoded(EXPECTED, None, "structured", identity)
    event = {"id": "evt-1", "type": "ticket.created", "time": 5, "data": DATA}
    assert decode(orjson.dumps(event)).event_id == "evt-1"


@pytest.mark.parametrize(
    ("event", "loc", "type_"),
    [
        ({"data_base64": "not base64!"}, "data_base64", "base64"),
        ({"data_base64": 12}, "data_base64", "base64"),
        ({"data_base64": base64.b64encode(b"\xff\xfe").decode()}, "data_base64", "json_invalid"),
        ({"data_base64": base64.b64encode(b"[1]").decode()}, "data", "model_type"),
        ({"data": DATA, "data_base64": "e30="}, "", "data_conflict"),
        ({"type": "ticket.created"}, "data", "missing"),
    ],
)
def test_structured_data_errors(event: dict[str, Any], loc: str, type_: str) -> None:
    error = fails(InvalidTicket, orjson.dumps({"id": "evt-x"} | event))
    assert error.detail["shape"] == "event"
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [(loc, type_)]
    assert error.event_id == "evt-x"


def test_batches_are_refused_as_invalid_with_a_reason() -> None:
    batch = orjson.dumps([{"id": "a", "data": DATA}, {"id": "b", "data": DATA}])
    error = fails(InvalidTicket, batch, content_type="application/cloudevents-batch+json")
    assert error.summary.startswith("invalid batch: CloudEvents batches")
    assert "not accepted" in error.summary
    assert error.detail["shape"] == "batch"
    assert error.detail["errors"][0]["type"] == "batch_not_accepted"


def test_other_cloudevents_formats_are_malformed() -> None:
    error = fails(MalformedMessage, b"\x00avro", content_type="application/cloudevents+avro")
    assert "application/cloudevents+avro is not read" in error.summary


def test_read_envelope_gives_the_body_and_the_data() -> None:
    structured = read_envelope(orjson.dumps({"id": "e", "data": {"a": 1}}), {}, None)
    assert (structured.mode, structured.body, structured.data) == (
        "structured",
        {"id": "e", "data": {"a": 1}},
        {"a": 1},
    )
    binary = read_envelope(b'{"a": 1}', {"ce-id": "e"}, None)
    assert (binary.mode, binary.body, binary.data) == ("binary", {"a": 1}, {"a": 1})


# ---- mappers and headers ---------------------------------------------------------------------


def test_a_two_argument_mapper_gets_the_body_and_the_headers() -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def mapper(body: dict[str, Any], headers: Mapping[str, Any]) -> Mapping[str, Any]:
        seen.append((body, dict(headers)))
        return SEED_TICKET | {"sellerId": str(headers["ce-source"]).strip("/")}

    message = rabbitmq.to_binary_event(sdk_event(source="/shop_9"))
    decoded = decode(message.body, message.headers, mapper=mapper)
    assert decoded.ticket.seller_id == "shop_9"
    assert decoded.event_id == "evt-42"
    assert seen == [(DATA, message.headers)]


def test_the_mapper_cannot_change_the_message_headers() -> None:
    def mapper(body: dict[str, Any], headers: Any) -> Mapping[str, Any]:
        headers["x-error-kind"] = "forged"
        return SEED_TICKET

    headers = {"ce-id": "e"}
    error = fails_with_mapper(mapper, headers)
    assert error.detail["errors"][0]["msg"].startswith("TypeError")
    assert headers == {"ce-id": "e"}


def fails_with_mapper(mapper: Mapper, headers: Mapping[str, Any]) -> MessageError:
    with pytest.raises(InvalidTicket) as info:
        decode(orjson.dumps(DATA), headers, mapper=mapper)
    return info.value


class CallableMapper:
    def __call__(self, body: dict[str, Any], headers: Mapping[str, Any]) -> Mapping[str, Any]:
        return SEED_TICKET | {"ticketId": str(headers["ce-id"])}


def one_arg(body: dict[str, Any]) -> Mapping[str, Any]:
    return SEED_TICKET | {"ticketId": "one-arg"}


def with_default(body: dict[str, Any], strict: bool = True) -> Mapping[str, Any]:
    assert strict is True  # never handed the headers
    return SEED_TICKET | {"ticketId": "default-kept"}


def headers_by_name(body: dict[str, Any], headers: Any = None) -> Mapping[str, Any]:
    return SEED_TICKET | {"ticketId": str(headers["ce-id"])}


def star_args(*args: Any) -> Mapping[str, Any]:
    return SEED_TICKET | {"ticketId": f"{len(args)} args"}


@pytest.mark.parametrize(
    ("mapper", "ticket_id"),
    [
        (one_arg, "one-arg"),
        (lambda body: SEED_TICKET | {"ticketId": "lambda"}, "lambda"),
        (with_default, "default-kept"),
        (headers_by_name, "evt-h"),
        (star_args, "2 args"),
        (CallableMapper(), "evt-h"),
    ],
)
def test_mapper_forms(mapper: Mapper, ticket_id: str) -> None:
    assert decode(orjson.dumps({}), {"ce-id": "evt-h"}, mapper=mapper).ticket.ticket_id == ticket_id


def test_the_signature_is_read_once() -> None:
    adapted = message_mapper(one_arg)
    assert message_mapper(adapted) is adapted  # idempotent
    two = CallableMapper()
    assert message_mapper(two) is two  # a two-argument mapper is used as it is


def test_load_mapper_reads_the_signature_at_load_time() -> None:
    mapper = load_mapper("tests.support.mappers:crash_on_poison")  # a one-argument mapper
    ticket = decode_message(orjson.dumps({"case": 12}), headers={"ce-id": "e"}, mapper=mapper)
    assert ticket.ticket.ticket_id == "12"


def test_mapper_errors_carry_the_event_id() -> None:
    def mapper(body: dict[str, Any]) -> Ticket:
        raise KeyError("case")

    assert fails_with_mapper(mapper, {"cloudEvents_id": "evt-k"}).event_id == "evt-k"


header_values = st.none() | st.booleans() | st.integers() | st.text() | st.binary()
header_names = st.sampled_from(["ce-id", "ce-specversion", "cloudEvents:id", "x-other"]) | st.text()
content_types = st.none() | st.sampled_from(
    ["application/json", STRUCTURED_CONTENT_TYPE, BATCH_CONTENT_TYPE, "application/cloudevents+xml"]
)


@settings(deadline=None)
@given(st.binary(), st.dictionaries(header_names, header_values, max_size=4), content_types)
def test_any_message_decodes_or_fails_cleanly(
    raw: bytes, headers: dict[str, Any], content_type: str | None
) -> None:
    try:
        event_id = decode(raw, headers, content_type).event_id
    except (MalformedMessage, InvalidTicket) as exc:
        orjson.dumps(exc.detail)  # it can become a header
        event_id = exc.event_id
    assert event_id is None or 0 < len(event_id) <= MAX_ID_CHARS


def test_the_names_spelled_out_are_the_sdks() -> None:
    from cloudevents.core.formats.json import JSONFormat

    assert STRUCTURED_CONTENT_TYPE == JSONFormat.CONTENT_TYPE
    assert HEADER_PREFIXES == (rabbitmq.CE_PREFIX, amqp.CE_PREFIX_COLON, amqp.CE_PREFIX_UNDERSCORE)


def test_reading_cloudevents_does_not_load_the_sdk() -> None:
    """Only outcome events (``WORKER_OUTCOME_EVENTS=1``) need it; every worker would carry it."""
    code = (
        "import orjson, worker.cli, worker.forward.consumer, worker.forward.outcomes\n"
        "from tests.support.examples import SEED_EVENT_DATA\n"
        "from worker.forward.mapping import decode_message\n"
        "decoded = decode_message(orjson.dumps(SEED_EVENT_DATA), "
        "headers={'ce-specversion': '1.0', 'ce-id': 'e-1'}, content_type=None, mapper=None)\n"
        "assert decoded.event_id == 'e-1', decoded"
    )
    assert modules_loaded(code, "cloudevents") == []
