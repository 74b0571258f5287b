"""Seller events in every shape JTL's own models accept, and only those (issue 18, part 3).

The fixtures (``worker.emulator.events.EXAMPLE_PAYLOADS``) and the AsyncAPI examples carry all
20 types in the shapes JTL's models require; each is checked against the required-field
lists of API-FACTS.md (``tests.support.event_shapes``) and read by the bridge's ``decode``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.support.event_shapes import REQUIRED, missing
from worker.emulator.events import (
    EXAMPLE_PAYLOADS,
    SELLER_EVENT_TYPES,
    example_event,
    seller_event,
)
from worker.events.mapping import (
    REPLY_TYPE,
    SellerEvent,
    Unmappable,
    decode,
    parse_date_time,
    reply_body,
)

ASYNCAPI = Path(__file__).parents[2] / "docs" / "asyncapi.yaml"


def messages() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(ASYNCAPI.read_text())
    return document["components"]["messages"]  # type: ignore[no-any-return]


def test_the_fixtures_cover_all_20_types_each_with_what_jtl_requires() -> None:
    assert set(SELLER_EVENT_TYPES) == set(REQUIRED)
    assert len(SELLER_EVENT_TYPES) == 20
    for event_type, payload in EXAMPLE_PAYLOADS.items():
        assert missing(event_type, payload) == [], event_type


def test_every_asyncapi_example_carries_what_jtl_requires_of_its_type() -> None:
    spec = messages()
    examples = spec["scxEvent"]["examples"]
    seen = {example["payload"]["type"] for example in examples}
    assert seen == set(REQUIRED) - {REPLY_TYPE}
    for example in examples:
        payload = example["payload"]
        assert example["headers"]["x-scx-event-type"] == payload["type"]
        assert missing(payload["type"], payload["data"]) == [], payload["type"]
    reply = spec["ticketReplied"]["x-scx-event-example"]
    assert reply["type"] == REPLY_TYPE
    assert missing(REPLY_TYPE, reply["event"]) == []


def test_the_checker_refuses_what_jtl_refuses() -> None:
    shipping = {"sellerId": "1", "orderId": "2", "shippingComplete": True, "carrier": "DHL"}
    assert missing("Seller:Order.Shipping", shipping) == ["shippingItems[].carrier", "not carrier"]
    assert missing("Seller:Order.Shipping", {**shipping, "shippingItems": []})
    assert missing(REPLY_TYPE, {**EXAMPLE_PAYLOADS[REPLY_TYPE], "from": {}}) == ["from.role"]


@pytest.mark.parametrize("event_type", SELLER_EVENT_TYPES)
def test_every_type_in_jtl_s_shape_is_mapped(event_type: str) -> None:
    decoded = decode(example_event(event_type))
    assert isinstance(decoded, SellerEvent), decoded
    # JTL's serializer writes +0000; the marketplace message carries RFC 3339.
    assert decoded.created_at == "2026-11-30T12:00:00+00:00"
    assert decoded.created == datetime(2026, 11, 30, 12, tzinfo=UTC)
    if event_type == REPLY_TYPE:
        assert decoded.reply is not None
        body = orjson.loads(reply_body(decoded, decoded.reply, []))
        assert body["data"]["reply_requested"] is True  # null read as absent
        assert body["data"]["created_at"] == "2026-11-30T11:58:00+00:00"


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ("2019-07-01T12:43:23Z", "2019-07-01T12:43:23Z"),
        ("2019-07-01T12:43:23+00:00", "2019-07-01T12:43:23+00:00"),
        ("2019-07-01T12:43:23+0000", "2019-07-01T12:43:23+00:00"),
        ("2019-07-01T14:43:23+0200", "2019-07-01T14:43:23+02:00"),
        ("2019-07-01T12:43:23.123+0000", "2019-07-01T12:43:23.123000+00:00"),
        # No offset: read as UTC (SCX names no zone; its examples are UTC).
        ("2019-07-01T12:43:23", "2019-07-01T12:43:23+00:00"),
        ("2019-07-01 12:43:23", "2019-07-01T12:43:23+00:00"),
    ],
)
def test_created_at_in_every_form_jtl_writes(written: str, read: str) -> None:
    reply = {**EXAMPLE_PAYLOADS[REPLY_TYPE], "createdAt": written}
    decoded = decode(seller_event("r-1", REPLY_TYPE, reply, created_at=written))
    assert isinstance(decoded, SellerEvent), decoded
    assert decoded.created_at == read
    assert decoded.reply is not None
    assert decoded.reply.created_at == read
    moment = parse_date_time(written)
    assert moment is not None
    assert moment.utcoffset() is not None


@pytest.mark.parametrize("value", [None, "absent"])
def test_reply_requested_null_or_absent_is_true(value: object) -> None:
    reply = dict(EXAMPLE_PAYLOADS[REPLY_TYPE])
    if value == "absent":
        del reply["replyRequested"]
    else:
        reply["replyRequested"] = value
    decoded = decode(seller_event("r-2", REPLY_TYPE, reply))
    assert isinstance(decoded, SellerEvent)
    assert decoded.reply is not None
    assert decoded.reply.reply_requested is True


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"from": {"role": "ROBOT"}}, "from.role"),
        (
            {"attachment": [{"filename": f"{n}.pdf", "contentType": "a/b"} for n in range(11)]},
            "attachment",
        ),
        ({"message": None}, "message"),
        ({"message": "absent"}, "message"),
        ({"createdAt": "2019-02-30T12:00:00Z"}, "createdAt"),
        ({"createdAt": "30.11.2026"}, "createdAt"),
        ({"replyRequested": "yes"}, "replyRequested"),
    ],
)
def test_still_refused_as_jtl_refuses(change: dict[str, Any], where: str) -> None:
    reply = {**EXAMPLE_PAYLOADS[REPLY_TYPE], **change}
    if reply.get("message") == "absent":
        del reply["message"]
    decoded = decode(seller_event("r-3", REPLY_TYPE, reply))
    assert isinstance(decoded, Unmappable)
    assert decoded.kind == "invalid"
    assert where in decoded.summary
