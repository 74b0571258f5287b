"""The Ticket schema's constraints, enforced once for API tickets and events alike."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from worker.models import Ticket, TicketEvent, TicketEventData

SEED = SEED_TICKET
EVENT_DATA = SEED_EVENT_DATA

REQUIRED = ["sellerId", "ticketId", "topic", "createdAt", "from", "subject", "message"]


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``base`` with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    result = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = result
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result


def error_types(model: type[BaseModel], data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return [(".".join(map(str, e["loc"])), e["type"]) for e in info.value.errors()]


def sent(ticket: Ticket) -> dict[str, Any]:
    body: dict[str, Any] = orjson.loads(ticket.to_json())
    return body


def test_seed_example_round_trips_with_the_same_keys_in_the_same_order() -> None:
    body = sent(Ticket.model_validate(SEED))
    assert body == SEED
    assert list(body) == list(SEED)


def test_minimal_ticket_omits_absent_optionals_but_always_sends_reply_requested() -> None:
    minimal = {key: SEED[key] for key in REQUIRED} | {"from": {"role": "SELLER"}}
    body = sent(Ticket.model_validate(minimal))
    assert list(body) == [*REQUIRED, "replyRequested"]
    assert body["replyRequested"] is True
    assert body["from"] == {"role": "SELLER"}


@pytest.mark.parametrize("path", ["from.name", "reference", "attachment"])
def test_null_optionals_are_left_out(path: str) -> None:
    body = sent(Ticket.model_validate(changed(SEED, path, None)))
    *parents, last = path.split(".")
    assert last not in (body[parents[0]] if parents else body)


def test_reply_requested_false_is_sent() -> None:
    assert sent(Ticket.model_validate(changed(SEED, "replyRequested", False)))[
        "replyRequested"
    ] is (False)


def test_unknown_fields_are_dropped_everywhere() -> None:
    data = changed(SEED, "extra", {"x": 1})
    data = changed(data, "from.email", "dave@example.org")
    data = changed(data, "reference.note", "n")
    data = changed(data, "attachment.0.size", 12)
    body = sent(Ticket.model_validate(data))
    assert body == SEED


def test_created_at_is_sent_byte_for_byte() -> None:
    stamp = "2023-11-07t05:31:56.1000000-00:00"
    assert (
        f'"createdAt":"{stamp}"'.encode()
        in Ticket.model_validate(changed(SEED, "createdAt", stamp)).to_json()
    )


def test_models_are_frozen() -> None:
    ticket = Ticket.model_validate(SEED)
    with pytest.raises(ValidationError, match="frozen"):
        ticket.topic = "FEEDBACK"  # type: ignore[misc]


# (path, largest/edge value accepted, smallest value rejected, error type)
BOUNDARIES = [
    ("sellerId", "a" * 50, "a" * 51, "string_pattern_mismatch"),
    ("sellerId", "A_z9", "", "string_pattern_mismatch"),
    ("sellerId", "4711", "47-11", "string_pattern_mismatch"),
    ("sellerId", "4711", "4711\n", "string_pattern_mismatch"),
    ("sellerId", "4711", "\n4711", "string_pattern_mismatch"),
    ("sellerId", "4711", "4711 ", "string_pattern_mismatch"),
    ("sellerId", "abc", "abé", "string_pattern_mismatch"),
    ("sellerId", "47", "٤٧", "string_pattern_mismatch"),  # Arabic-Indic digits: Unicode \d
    ("sellerId", "ab", "ａｂ", "string_pattern_mismatch"),  # fullwidth letters: Unicode \w
    ("sellerId", "4711", 4711, "string_type"),
    ("ticketId", "t" * 256, "t" * 257, "string_too_long"),
    ("ticketId", "t", "", "string_too_short"),
    ("ticketId", "1", 1, "string_type"),
    ("subject", "s" * 1024, "s" * 1025, "string_too_long"),
    ("subject", "s", "", "string_too_short"),
    ("message", "m" * 1024, "m" * 1025, "string_too_long"),
    ("message", "m", "", "string_too_short"),
    ("message", "m", ["m"], "string_type"),
    ("from.name", "n" * 100, "n" * 101, "string_too_long"),
    ("from.name", "", 7, "string_type"),
    ("from.role", "CHANNEL", "buyer", "literal_error"),
    ("from", {"role": "BUYER"}, "BUYER", "model_type"),
    ("from", {"role": "BUYER"}, ..., "missing"),
    ("topic", "INCIDENT", "question", "literal_error"),
    ("topic", "REFUND", "OTHER", "literal_error"),
    ("reference.type", "CHANNELOFFER", "order_id", "literal_error"),
    ("reference.id", "1", "", "string_too_short"),
    ("reference.id", "1", 1, "string_type"),
    ("reference.id", "1", ..., "missing"),
    ("replyRequested", False, "yes", "bool_type"),
    ("replyRequested", True, "true", "bool_type"),
    ("replyRequested", True, 1, "bool_type"),
    ("replyRequested", False, 0, "bool_type"),
    ("replyRequested", True, None, "bool_type"),
    ("attachment", [SEED["attachment"][0]] * 10, [SEED["attachment"][0]] * 11, "too_long"),
    ("attachment", [], {}, "tuple_type"),
    ("attachment.0.filename", "f" * 256, "f" * 257, "string_too_long"),
    ("attachment.0.filename", "f", "", "string_too_short"),
    ("attachment.0.contentType", "c" * 128, "c" * 129, "string_too_long"),
    ("attachment.0.contentType", "c", "", "string_too_short"),
    ("attachment.0.contentType", "c", ..., "missing"),
]


@pytest.mark.parametrize(("path", "good", "bad", "error"), BOUNDARIES)
def test_ticket_boundaries(path: str, good: Any, bad: Any, error: str) -> None:
    Ticket.model_validate(changed(SEED, path, good))
    assert error_types(Ticket, changed(SEED, path, bad)) == [(path, error)]


VALID_TIMES = [
    "2023-11-07T05:31:56Z",
    "2023-11-07t05:31:56z",
    "2023-11-07T05:31:56.123456789+01:00",
    "2024-02-29T23:59:59-00:00",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59.9-23:59",
]
INVALID_TIMES = [
    "2023-11-07T05:31:56",  # no offset: ambiguous
    "2023-11-07",  # a date alone
    "2023-02-30T00:00:00Z",  # no such day
    "2023-02-29T00:00:00Z",
    "2023-13-01T00:00:00Z",
    "2023-11-07T24:00:00Z",
    "2023-11-07T05:60:00Z",
    "2023-11-07T05:31:60Z",  # leap seconds are refused
    "2023-11-07 05:31:56Z",
    "2023-11-07T05:31:56+0100",
    "2023-11-07T05:31:56+01",
    "2023-11-07T05:31:56+24:00",
    "2023-11-07T05:31:56+05:60",
    "2023-11-07T05:31:56.Z",
    "2023-11-07T05:31:56Z\n",
    " 2023-11-07T05:31:56Z",
    "２０２３-11-07T05:31:56Z",  # fullwidth digits
    "20231107T053156Z",
    "",
]


@pytest.mark.parametrize("stamp", VALID_TIMES)
def test_valid_created_at(stamp: str) -> None:
    assert Ticket.model_validate(changed(SEED, "createdAt", stamp)).created_at == stamp


@pytest.mark.parametrize("stamp", [*INVALID_TIMES, 1699334716, 1699334716.5, None])
def test_invalid_created_at(stamp: object) -> None:
    [(loc, kind)] = error_types(Ticket, changed(SEED, "createdAt", stamp))
    assert loc == "createdAt"
    assert kind == ("rfc3339_date_time" if isinstance(stamp, str) else "string_type")


def test_api_ticket_keys_are_camel_case_only() -> None:
    data = changed(changed(SEED, "sellerId", ...), "seller_id", "4711")
    assert error_types(Ticket, data) == [("sellerId", "missing")]


# ---- events ----------------------------------------------------------------------------------


def event_ticket(data: dict[str, Any]) -> dict[str, Any]:
    return sent(TicketEvent.model_validate({"data": data}).data.to_ticket())


def test_event_maps_to_the_seed_ticket() -> None:
    assert event_ticket(EVENT_DATA) == SEED


def test_event_reply_requested_defaults_to_true_and_false_is_kept() -> None:
    assert event_ticket(EVENT_DATA)["replyRequested"] is True
    assert event_ticket(changed(EVENT_DATA, "reply_requested", False))["replyRequested"] is False


@pytest.mark.parametrize("spelling", ["question", "QUESTION", "Question", "qUeStIoN"])
def test_event_topic_is_case_insensitive(spelling: str) -> None:
    assert event_ticket(changed(EVENT_DATA, "topic", spelling))["topic"] == "QUESTION"


@pytest.mark.parametrize(("spelling", "role"), [("seller", "SELLER"), ("Channel", "CHANNEL")])
def test_event_role_is_case_insensitive(spelling: str, role: str) -> None:
    assert event_ticket(changed(EVENT_DATA, "author.role", spelling))["from"]["role"] == role


@pytest.mark.parametrize(
    ("spelling", "api"),
    [
        ("order_id", "ORDERID"),
        ("ORDER_ID", "ORDERID"),
        ("orderid", "ORDERID"),
        ("OrderId", "ORDERID"),
        ("order_item_id", "ORDERITEMID"),
        ("Order_Item_ID", "ORDERITEMID"),
        ("ORDERITEMID", "ORDERITEMID"),
        ("offer", "OFFER"),
        ("OFFER", "OFFER"),
        ("channel_offer", "CHANNELOFFER"),
        ("channelOffer", "CHANNELOFFER"),
        ("CHANNEL_OFFER", "CHANNELOFFER"),
    ],
)
def test_event_reference_type_spellings(spelling: str, api: str) -> None:
    assert event_ticket(changed(EVENT_DATA, "reference.type", spelling))["reference"] == {
        "type": api,
        "id": "19820701",
    }


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("topic", "ıncıdent"),  # dotless i upper-cases to I in Python; not ASCII, not accepted
        ("topic", "feed back"),
        ("author.role", "bUYER "),
        ("reference.type", "order-id"),
        ("reference.type", "orderıd"),
        ("topic", 1),
    ],
)
def test_event_enums_reject_near_misses(path: str, value: Any) -> None:
    assert error_types(TicketEvent, {"data": changed(EVENT_DATA, path, value)}) == [
        (f"data.{path}", "literal_error")
    ]


def test_event_without_optionals_maps_to_a_minimal_ticket() -> None:
    data = {k: v for k, v in EVENT_DATA.items() if k not in {"reference", "attachments"}}
    data = changed(data, "author.name", ...)
    assert list(event_ticket(data)) == [*REQUIRED, "replyRequested"]


def test_event_extra_fields_are_dropped() -> None:
    data = changed(EVENT_DATA, "shop_url", "https://example.org")
    data = changed(data, "author.email", "dave@example.org")
    data = changed(data, "reference.url", "u")
    data = changed(data, "attachments.0.size", 3)
    assert event_ticket(data) == SEED


def test_event_keys_are_snake_case_only() -> None:
    data = changed(changed(EVENT_DATA, "seller_id", ...), "sellerId", "4711")
    assert error_types(TicketEventData, data) == [("seller_id", "missing")]


# The same constraint, reported in each input's own terms.
SHARED = [
    ("seller_id", "sellerId", "a" * 51, "string_pattern_mismatch"),
    ("seller_id", "sellerId", "4711\n", "string_pattern_mismatch"),
    ("ticket_id", "ticketId", "t" * 257, "string_too_long"),
    ("created_at", "createdAt", "2023-11-07T05:31:56", "rfc3339_date_time"),
    ("created_at", "createdAt", "2023-02-30T00:00:00Z", "rfc3339_date_time"),
    ("author.role", "from.role", "pilot", "literal_error"),
    ("author.name", "from.name", "n" * 101, "string_too_long"),
    ("subject", "subject", "s" * 1025, "string_too_long"),
    ("message", "message", "", "string_too_short"),
    ("reference.id", "reference.id", "", "string_too_short"),
    ("reply_requested", "replyRequested", "1", "bool_type"),
    ("attachments", "attachment", [EVENT_DATA["attachments"][0]] * 11, "too_long"),
    ("attachments.0.filename", "attachment.0.filename", "f" * 257, "string_too_long"),
    ("attachments.0.content_type", "attachment.0.contentType", "c" * 129, "string_too_long"),
]


@pytest.mark.parametrize(("event_path", "ticket_path", "bad", "error"), SHARED)
def test_event_and_ticket_share_constraints(
    event_path: str, ticket_path: str, bad: Any, error: str
) -> None:
    event = {"data": changed(EVENT_DATA, event_path, bad)}
    assert error_types(TicketEvent, event) == [(f"data.{event_path}", error)]
    if ticket_path == "attachment":  # the event list above holds event-shaped items
        bad = [SEED["attachment"][0]] * 11
    assert error_types(Ticket, changed(SEED, ticket_path, bad)) == [(ticket_path, error)]


@pytest.mark.parametrize("data", [None, [], "x", ...])
def test_event_needs_a_data_object(data: Any) -> None:
    envelope = {} if data is ... else {"data": data}
    [(loc, _)] = error_types(TicketEvent, envelope)
    assert loc == "data"


def test_event_envelope_fields_are_optional_and_unchecked() -> None:
    envelope = {"id": 7, "type": "ticket.updated", "time": None, "data": EVENT_DATA}
    assert TicketEvent.model_validate(envelope).data == TicketEventData.model_validate(EVENT_DATA)
