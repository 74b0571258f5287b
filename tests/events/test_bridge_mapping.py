"""SCX seller events -> marketplace messages (``worker.events.mapping``), without I/O."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import orjson
import pytest

from worker.core.spool import Spooled
from worker.emulator.events import seller_event, ticket_reply
from worker.events.mapping import (
    ATTACHMENT_KEY,
    FileOutcome,
    NoId,
    ReplyAttachment,
    SellerEvent,
    Unmappable,
    decode,
    other_message,
    reply_messages,
    routing_key,
    unmappable_message,
)


def reply(**changes: Any) -> dict[str, Any]:
    item = ticket_reply(
        "5cde84164d811d00144581f8",
        seller_id="4711",
        ticket_id="CASE-01071982",
        message="Please send us a photo.",
        created_at="2026-11-30T09:15:00+01:00",
        role="SELLER",
        name="Shop Support",
        reply_requested=True,
        attachments=[("photo.png", "image/png"), ("terms.pdf", "application/pdf")],
    )
    item["event"].update(changes)
    return item


def spooled(data: bytes) -> Spooled:
    return Spooled(io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    ("scx_type", "key"),
    [
        ("Seller:Order.Shipping", "scx.seller.order.shipping"),
        ("Seller:Order.Cancellation.Request", "scx.seller.order.cancellation.request"),
        ("System:Test", "scx.system.test"),
        (
            "Seller:Meta.SellerAttributesUpdateRequest",
            "scx.seller.meta.sellerattributesupdaterequest",
        ),
    ],
)
def test_routing_keys_lower_case_the_type_and_turn_colons_into_dots(
    scx_type: str, key: str
) -> None:
    assert routing_key(scx_type) == key


def test_any_other_type_is_wrapped_with_the_event_unchanged() -> None:
    payload = {"orderId": "A-1", "nested": {"list": [1, 2.5, None]}}
    decoded = decode(seller_event("e-1", "Seller:Order.Shipping", payload))
    assert isinstance(decoded, SellerEvent)
    message = other_message(decoded)
    assert message.routing_key == "scx.seller.order.shipping"
    assert message.message_id == "e-1"
    assert message.content_type == "application/json"
    assert message.headers == {
        "x-scx-event-id": "e-1",
        "x-scx-event-type": "Seller:Order.Shipping",
    }
    assert orjson.loads(message.payload()) == {
        "id": "e-1",
        "type": "Seller:Order.Shipping",
        "time": "2026-11-30T12:00:00+00:00",
        "source": "scx",
        "clientversion": "1.0.0",
        "data": payload,
    }


def test_an_event_given_as_json_text_is_decoded() -> None:
    item = seller_event("e-2", "Seller:Offer.New", {})
    item["event"] = '{"offerId": 7}'
    decoded = decode(item)
    assert isinstance(decoded, SellerEvent)
    assert decoded.payload == {"offerId": 7}


def test_the_reply_maps_exactly_with_files_first() -> None:
    decoded = decode(reply())
    assert isinstance(decoded, SellerEvent)
    assert decoded.reply is not None
    photo = b"\x89PNG fake"
    files = [
        FileOutcome(ReplyAttachment(filename="photo.png", contentType="image/png"), spooled(photo)),
        FileOutcome(
            ReplyAttachment(filename="terms.pdf", contentType="application/pdf"),
            unavailable={"status": 404},
        ),
    ]
    messages = reply_messages(decoded, decoded.reply, files, "ticket.replied")
    assert [m.routing_key for m in messages] == [ATTACHMENT_KEY, "ticket.replied"]
    attachment, message = messages
    assert attachment.payload() == photo
    assert attachment.message_id == "5cde84164d811d00144581f8/photo.png"
    assert attachment.content_type == "image/png"
    sha = hashlib.sha256(photo).hexdigest()
    assert attachment.headers == {
        "x-scx-event-id": "5cde84164d811d00144581f8",
        "x-scx-event-type": "Seller:Ticket.Reply",
        "seller_id": "4711",
        "ticket_id": "CASE-01071982",
        "filename": "photo.png",
        "sha256": sha,
    }
    assert message.message_id == "5cde84164d811d00144581f8"
    assert orjson.loads(message.payload()) == {
        "id": "5cde84164d811d00144581f8",
        "type": "ticket.replied",
        "time": "2026-11-30T09:15:00+01:00",
        "source": "scx",
        "data": {
            "seller_id": "4711",
            "ticket_id": "CASE-01071982",
            "created_at": "2026-11-30T09:15:00+01:00",
            "author": {"role": "seller", "name": "Shop Support"},
            "message": "Please send us a photo.",
            "reply_requested": True,
            "attachments": [
                {"filename": "photo.png", "content_type": "image/png", "size": 9, "sha256": sha},
                {
                    "filename": "terms.pdf",
                    "content_type": "application/pdf",
                    "unavailable": {"status": 404},
                },
            ],
        },
    }


def test_a_reply_without_name_or_attachments_leaves_them_out() -> None:
    decoded = decode(reply(**{"from": {"role": "buyer"}, "attachment": None}))
    assert isinstance(decoded, SellerEvent)
    assert decoded.reply is not None
    (message,) = reply_messages(decoded, decoded.reply, [], "custom.key")
    data = orjson.loads(message.payload())["data"]
    assert message.routing_key == "custom.key"
    assert data["author"] == {"role": "buyer"}
    assert data["attachments"] == []


def test_a_filename_named_twice_is_fetched_once() -> None:
    files = [{"filename": "a.txt", "contentType": "text/plain"}] * 2
    decoded = decode(reply(attachment=files))
    assert isinstance(decoded, SellerEvent)
    assert decoded.reply is not None
    assert [f.filename for f in decoded.reply.files()] == ["a.txt"]


@pytest.mark.parametrize(
    "item",
    [
        {"type": "System:Test", "event": {}},
        {"id": "", "type": "System:Test"},
        {"id": 42, "type": "System:Test"},
        ["not", "an", "object"],
        None,
    ],
)
def test_items_without_an_id_cannot_be_acknowledged(item: object) -> None:
    assert isinstance(decode(item), NoId)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": None}, "no type"),
        ({"type": "Seller:Order Shipping"}, "routing key"),
        ({"type": "Seller:#"}, "routing key"),
        ({"createdAt": "yesterday"}, "createdAt"),
        ({"event": "{broken"}, "not JSON"),
        ({"event": [1, 2]}, "not a JSON object"),
        ({"event": None}, "not a JSON object"),
    ],
)
def test_bad_envelopes_are_malformed_and_kept_raw(change: dict[str, Any], reason: str) -> None:
    item = {**seller_event("e-9", "Seller:Order.Refund", {"a": 1}), **change}
    decoded = decode(item)
    assert isinstance(decoded, Unmappable)
    assert decoded.kind == "malformed"
    assert reason in decoded.summary
    message = unmappable_message(decoded)
    assert orjson.loads(message.payload()) == item
    assert message.message_id == "e-9"
    assert message.headers["x-error-kind"] == "malformed"
    assert reason in orjson.loads(message.headers["x-error-detail"])["error"]


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"sellerId": "no spaces allowed"}, "sellerId"),
        ({"ticketId": ""}, "ticketId"),
        ({"message": "x" * 1025}, "message"),
        ({"from": {"role": "ROBOT"}}, "from.role"),
        ({"createdAt": "2026-02-30T10:00:00Z"}, "createdAt"),
        ({"replyRequested": "yes"}, "replyRequested"),
        ({"attachment": [{"filename": "a.txt"}]}, "attachment.0.contentType"),
        (
            {
                "attachment": [
                    {"filename": f"{n}.txt", "contentType": "text/plain"} for n in range(11)
                ]
            },
            "attachment",
        ),
    ],
)
def test_an_invalid_reply_is_unmappable_with_the_field_named(
    change: dict[str, Any], loc: str
) -> None:
    decoded = decode(reply(**change))
    assert isinstance(decoded, Unmappable)
    assert decoded.kind == "invalid"
    errors = decoded.detail["errors"]
    assert errors[0]["loc"] == loc
    assert "input" not in errors[0]
