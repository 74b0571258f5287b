"""decode_message and load_mapper: a message in, a Ticket or a MessageError out.

The CloudEvents content modes have their own file, tests/forward/test_envelope.py."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from worker.core.errors import InvalidTicket, MalformedMessage
from worker.forward.mapping import Mapper, decode_message, load_mapper, message_mapper
from worker.models import Ticket

SEED = SEED_TICKET
# The shared example in other accepted spellings: mixed-case topic, upper-case role,
# ORDER_ID, and reply_requested given explicitly.
EVENT: dict[str, Any] = {
    "id": "evt-1",
    "type": "ticket.created",
    "time": "2023-11-07T05:32:00Z",
    "data": SEED_EVENT_DATA
    | {
        "topic": "Question",
        "author": {"role": "BUYER", "name": "Dave"},
        "reference": {"type": "ORDER_ID", "id": "19820701"},
        "reply_requested": True,
    },
}
TOP_KEYS = {*SEED}
NESTED_KEYS = {"from": {"role", "name"}, "reference": {"type", "id"}}
ATTACHMENT_KEYS = {"filename", "contentType"}


def body(value: Any) -> bytes:
    return orjson.dumps(value)


def ticket_of(raw: bytes, mapper: Mapper | None = None) -> Ticket:
    """The ticket of a plain JSON message (no headers, no content type)."""
    return decode_message(raw, mapper=message_mapper(mapper) if mapper else None).ticket


def invalid(raw: bytes, mapper: Mapper | None = None) -> InvalidTicket:
    with pytest.raises(InvalidTicket) as info:
        ticket_of(raw, mapper)
    return info.value


def assert_schema_keys_only(sent: dict[str, Any]) -> None:
    assert set(sent) <= TOP_KEYS
    for key, allowed in NESTED_KEYS.items():
        assert set(sent.get(key, {})) <= allowed
    for item in sent.get("attachment", []):
        assert set(item) == ATTACHMENT_KEYS


# ---- the two shapes ---------------------------------------------------------------------------


def test_api_ticket_round_trips() -> None:
    assert orjson.loads(ticket_of(body(SEED)).to_json()) == SEED


def test_event_maps_to_the_api_ticket() -> None:
    assert orjson.loads(ticket_of(body(EVENT)).to_json()) == SEED


def test_event_envelope_is_optional_and_its_type_is_not_checked() -> None:
    assert ticket_of(body({"data": EVENT["data"]})) == ticket_of(body(EVENT))
    assert ticket_of(body(EVENT | {"type": "other", "id": 5})) == ticket_of(body(EVENT))


def test_extra_fields_are_never_sent() -> None:
    ticket = SEED | {"tracking": {"deep": [1]}, "from": {"role": "BUYER", "mood": "calm"}}
    sent = orjson.loads(ticket_of(body(ticket)).to_json())
    assert set(sent) == TOP_KEYS
    assert set(sent["from"]) == {"role"}
    event = EVENT | {"data": EVENT["data"] | {"shop": "x", "author": {"role": "seller", "x": 1}}}
    sent = orjson.loads(ticket_of(body(event)).to_json())
    assert set(sent) == TOP_KEYS
    assert sent["from"] == {"role": "SELLER"}


def test_a_seller_id_key_makes_it_a_ticket() -> None:
    error = invalid(body(EVENT | {"sellerId": "4711"}))
    assert error.detail["shape"] == "ticket"
    assert {e["loc"] for e in error.detail["errors"]} >= {"ticketId", "from", "subject"}


# ---- malformed bodies -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b'{"subject": "\xe9t\xe9"}', "not valid UTF-8 JSON"),  # Latin-1, not UTF-8
        (b'{"subject": "secret-value"', "not valid UTF-8 JSON"),
        (b"", "not valid UTF-8 JSON"),
        (b"{'a': 1}", "not valid UTF-8 JSON"),
        (b"NaN", "not valid UTF-8 JSON"),
        (b"[]", "an array, not a JSON object"),
        (b'"x"', "a string, not a JSON object"),
        (b"null", "null, not a JSON object"),
        (b"42", "a number, not a JSON object"),
        (b"4.2", "a number, not a JSON object"),
        (b"true", "a boolean, not a JSON object"),
    ],
)
def test_malformed_bodies(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        ticket_of(raw)
    assert list(info.value.detail) == ["error"]
    assert reason in info.value.detail["error"]
    assert info.value.summary == info.value.detail["error"]
    assert b"secret" not in orjson.dumps(info.value.detail)


def test_malformed_body_never_reaches_the_mapper() -> None:
    def mapper(obj: dict[str, Any]) -> Ticket:
        raise AssertionError("called")

    with pytest.raises(MalformedMessage):
        ticket_of(b"[1]", mapper)


# ---- invalid tickets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("envelope", "kind"),
    [({"id": "e"}, "missing"), ({"data": None}, "model_type"), ({"data": [1]}, "model_type")],
)
def test_event_without_a_data_object(envelope: dict[str, Any], kind: str) -> None:
    error = invalid(body(envelope))
    assert error.detail["shape"] == "event"
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [("data", kind)]
    assert error.summary.startswith("invalid event: data: ")


def test_event_error_paths_are_in_event_terms() -> None:
    data = EVENT["data"] | {
        "author": {"role": "pilot"},
        "attachments": [EVENT["data"]["attachments"][0]] * 3 + [{"content_type": "x"}],
    }
    error = invalid(body(EVENT | {"data": data}))
    assert error.detail == {
        "shape": "event",
        "errors": [
            {
                "loc": "data.author.role",
                "msg": "Input should be 'BUYER', 'SELLER' or 'CHANNEL'",
                "type": "literal_error",
            },
            {"loc": "data.attachments.3.filename", "msg": "Field required", "type": "missing"},
        ],
    }
    assert error.summary == (
        "invalid event: data.author.role: Input should be 'BUYER', 'SELLER' or 'CHANNEL'"
        " (and 1 more)"
    )


def test_ticket_error_paths_are_in_ticket_terms() -> None:
    error = invalid(body(SEED | {"from": {"role": "pilot"}, "createdAt": "2023-11-07"}))
    assert error.detail["shape"] == "ticket"
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [
        ("createdAt", "rfc3339_date_time"),
        ("from.role", "literal_error"),
    ]
    assert error.summary.startswith("invalid ticket: createdAt: Input should be an RFC 3339")


def test_error_details_never_quote_the_input() -> None:
    secret = "Dave-Bowman-" * 100
    ticket = SEED | {"subject": secret, "ticketId": secret, "from": {"role": secret}}
    error = invalid(body(ticket))
    assert len(error.detail["errors"]) == 3
    assert b"Dave-Bowman" not in orjson.dumps(error.detail)
    assert "Dave-Bowman" not in error.summary


def test_error_list_is_capped() -> None:
    error = invalid(body(SEED | {"attachment": [{}] * 15}))
    assert len(error.detail["errors"]) == 20
    assert error.detail["omitted"] >= 10
    assert "invalid ticket: attachment.0.filename: Field required (and " in error.summary


# ---- mappers -----------------------------------------------------------------------------------


def camel_mapper(obj: dict[str, Any]) -> Mapping[str, Any]:
    return {**SEED, "ticketId": obj["case"]["number"]}


def test_mapper_mapping_is_validated_as_a_ticket() -> None:
    ticket = ticket_of(body({"case": {"number": "C-9"}}), camel_mapper)
    assert orjson.loads(ticket.to_json()) == SEED | {"ticketId": "C-9"}


def test_mapper_replaces_shape_detection() -> None:
    seen: list[dict[str, Any]] = []

    def mapper(obj: dict[str, Any]) -> Mapping[str, Any]:
        seen.append(obj)
        return types.MappingProxyType(SEED)

    assert ticket_of(body(EVENT | {"sellerId": "x"}), mapper) == ticket_of(body(SEED))
    assert seen == [EVENT | {"sellerId": "x"}]


def test_mapper_may_return_a_ticket() -> None:
    ticket = Ticket.model_validate(SEED)
    assert ticket_of(b"{}", lambda obj: ticket) is ticket


def test_mapper_result_errors_are_in_ticket_terms() -> None:
    error = invalid(b"{}", lambda obj: SEED | {"from": {"role": "pilot"}})
    assert error.detail["shape"] == "mapper"
    assert [e["loc"] for e in error.detail["errors"]] == ["from.role"]
    assert error.summary.startswith("invalid mapper result: from.role: ")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("sellerId", b"4711"),
        ("ticketId", bytearray(b"t")),
        ("createdAt", b"2023-11-07T05:31:56Z"),
        ("subject", b"s"),
        ("message", b"m"),
        ("from.name", b"Dave"),
        ("reference.id", b"1"),
        ("attachment.0.filename", b"f"),
        ("attachment.0.contentType", b"c"),
    ],
)
def test_mapper_strings_are_not_coerced_from_bytes(path: str, value: object) -> None:
    mapped = SEED | {
        "from": dict(SEED["from"]),
        "reference": dict(SEED["reference"]),
        "attachment": [dict(SEED["attachment"][0])],
    }
    *parents, last = path.split(".")
    node: Any = mapped
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    node[last] = value
    error = invalid(b"{}", lambda obj: mapped)
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [(path, "string_type")]


def test_mapper_returning_a_non_mapping() -> None:
    error = invalid(b"{}", lambda obj: None)  # type: ignore[arg-type]
    assert [(e["loc"], e["type"]) for e in error.detail["errors"]] == [("", "model_type")]
    assert error.summary.startswith("invalid mapper result: Input should be")


def test_mapper_exception_becomes_invalid_ticket() -> None:
    def mapper(obj: dict[str, Any]) -> Ticket:
        raise KeyError("case")

    error = invalid(b"{}", mapper)
    assert error.detail == {
        "shape": "mapper",
        "errors": [{"loc": "", "msg": "KeyError: 'case'", "type": "mapper_error"}],
    }
    assert error.summary == "invalid mapper result: KeyError: 'case'"
    assert isinstance(error.__cause__, KeyError)


def test_mapper_exception_text_is_truncated() -> None:
    def mapper(obj: dict[str, Any]) -> Ticket:
        raise ValueError("x" * 10_000)

    [entry] = invalid(b"{}", mapper).detail["errors"]
    assert entry["msg"].startswith("ValueError: xxx")
    assert len(entry["msg"]) == 500
    assert entry["msg"].endswith("x…")


def test_mapper_own_validation_error_is_reported_without_input() -> None:
    def mapper(obj: dict[str, Any]) -> Ticket:
        return Ticket.model_validate(SEED | {"subject": "private " * 200})

    error = invalid(b"{}", mapper)
    assert error.detail["errors"] == [
        {
            "loc": "subject",
            "msg": "String should have at most 1024 characters",
            "type": "string_too_long",
        }
    ]
    assert "private" not in error.summary


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(2)])
def test_mapper_base_exceptions_propagate(exc: BaseException) -> None:
    def mapper(obj: dict[str, Any]) -> Ticket:
        raise exc

    with pytest.raises(type(exc)):
        ticket_of(b"{}", mapper)


# ---- load_mapper -------------------------------------------------------------------------------


def test_load_mapper_imports_a_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "acme_ticket_mapper.py").write_text(
        "def to_ticket(obj):\n    return {**obj['ticket'], 'sellerId': 'acme'}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_ticket_mapper", raising=False)
    mapper = load_mapper("acme_ticket_mapper:to_ticket")
    ticket = ticket_of(body({"ticket": SEED}), mapper)
    assert ticket.seller_id == "acme"


def test_load_mapper_follows_dotted_attributes() -> None:
    assert load_mapper("json:JSONDecoder.decode") is __import__("json").JSONDecoder.decode


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("json.loads", "not of the form"),
        (":loads", "not of the form"),
        ("json:", "not of the form"),
        ("json:loads:x", "not of the form"),
        ("", "not of the form"),
        ("no_such_module_for_sure:f", "cannot import module 'no_such_module_for_sure'"),
        (".relative:f", "cannot import module '.relative'"),
        ("json:no_such_function", "'no_such_function' not found"),
        ("json:JSONDecoder.nope", "'JSONDecoder.nope' not found"),
        ("string:digits", "'digits' is not callable"),
    ],
)
def test_load_mapper_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_mapper(spec)


def test_load_mapper_reports_a_module_that_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "acme_broken_mapper.py").write_text("raise RuntimeError('no config')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_broken_mapper", raising=False)
    with pytest.raises(ValueError, match="cannot import module 'acme_broken_mapper': no config"):
        load_mapper("acme_broken_mapper:f")


# ---- properties ------------------------------------------------------------------------------


def any_case(word: str) -> st.SearchStrategy[str]:
    flips = st.lists(st.booleans(), min_size=len(word), max_size=len(word))
    return flips.map(
        lambda up: "".join(c.upper() if u else c.lower() for c, u in zip(word, up, strict=True))
    )


def spellings(*words: str) -> st.SearchStrategy[str]:
    return st.sampled_from(words).flatmap(any_case)


texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=1024)
offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
created_at = st.tuples(st.datetimes(timezones=offsets), st.booleans()).map(
    lambda t: t[0].isoformat().replace("+00:00", "Z") if t[1] else t[0].isoformat()
)
extra = st.dictionaries(
    st.text(max_size=5).map(lambda k: "x_" + k), st.integers(-(2**63), 2**63 - 1), max_size=2
)
attachment = st.fixed_dictionaries(
    {
        "filename": st.text(st.characters(codec="utf-8"), min_size=1, max_size=256),
        "content_type": st.text(st.characters(codec="utf-8"), min_size=1, max_size=128),
    }
)
event_data = st.fixed_dictionaries(
    {
        "seller_id": st.from_regex(r"[A-Za-z0-9_]{1,50}", fullmatch=True),
        "ticket_id": st.text(st.characters(codec="utf-8"), min_size=1, max_size=256),
        "topic": spellings("question", "feedback", "delivery", "return", "refund", "incident"),
        "created_at": created_at,
        "author": st.fixed_dictionaries(
            {"role": spellings("buyer", "seller", "channel")},
            optional={"name": st.text(st.characters(codec="utf-8"), max_size=100)},
        ),
        "subject": texts,
        "message": texts,
    },
    optional={
        "reference": st.fixed_dictionaries(
            {
                "type": spellings(
                    "order_id",
                    "order_item_id",
                    "offer",
                    "channel_offer",
                    "orderid",
                    "orderitemid",
                    "channeloffer",
                ),
                "id": st.text(min_size=1, max_size=20),
            }
        ),
        "reply_requested": st.booleans(),
        "attachments": st.lists(attachment, max_size=10),
    },
)
events = st.tuples(event_data, extra).map(lambda t: {"id": "e", "data": t[0] | t[1]})


# Validation is fast, but a loaded CI box must not turn a pause into a flaky deadline failure.
@settings(deadline=None)
@given(events)
def test_valid_events_always_decode_to_schema_keys_only(event: dict[str, Any]) -> None:
    ticket = ticket_of(body(event))
    sent = orjson.loads(ticket.to_json())
    assert_schema_keys_only(sent)
    data = event["data"]
    assert sent["sellerId"] == data["seller_id"]
    assert sent["createdAt"] == data["created_at"]
    assert sent["topic"] == data["topic"].upper()
    assert sent["replyRequested"] is data.get("reply_requested", True)
    assert len(sent.get("attachment", [])) == len(data.get("attachments", []))
    assert ticket_of(ticket.to_json()) == ticket  # the API shape decodes to the same ticket


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(st.characters(codec="utf-8"), max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def decodes_or_fails_cleanly(raw: bytes) -> None:
    try:
        ticket_of(raw)
    except (MalformedMessage, InvalidTicket) as exc:
        orjson.dumps(exc.detail)  # the detail must be able to become a header


@settings(deadline=None)
@given(st.binary())
def test_arbitrary_bytes_fail_cleanly(raw: bytes) -> None:
    decodes_or_fails_cleanly(raw)


@settings(deadline=None)
@given(json_values)
def test_arbitrary_json_fails_cleanly(value: Any) -> None:
    decodes_or_fails_cleanly(body(value))


event_fields = st.sampled_from(
    ["seller_id", "topic", "created_at", "author", "reference", "reply_requested", "attachments"]
)


@settings(deadline=None)
@given(events, event_fields, json_values, st.booleans())
def test_near_valid_events_fail_cleanly(
    event: dict[str, Any], field: str, value: Any, nested: bool
) -> None:
    data = event["data"]
    if nested and field == "author":  # reach the case-folding validator with any JSON value
        data["author"]["role"] = value
    elif nested and field == "reference":
        data["reference"] = {"type": value, "id": "1"}
    else:
        data[field] = value
    decodes_or_fails_cleanly(body(event))


@settings(deadline=None)
@given(st.sampled_from(sorted(SEED)), json_values)
def test_near_valid_tickets_fail_cleanly(key: str, value: Any) -> None:
    decodes_or_fails_cleanly(body(SEED | {key: value}))
