"""Sample ticket events for the demo, the tests and benchmarks (``scx-forwarder sample``).

Valid events cover every topic, role and reference spelling the mapping accepts; invalid
ones cover each class the worker dead-letters before calling the API.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson

TOPICS = ("question", "feedback", "delivery", "return", "refund", "incident")
ROLES = ("buyer", "seller", "channel")
REFERENCES = ("order_id", "order_item_id", "offer", "channel_offer", "ORDERID")

#: One body per class of bad input, each with the kind the worker must give it.
INVALID_SAMPLES: tuple[tuple[str, bytes], ...] = (
    ("malformed", b"\xff\xfe not utf-8"),
    ("malformed", b"{this is not json"),
    ("malformed", b"[1, 2, 3]"),
    ("invalid", b'{"id": "evt-no-data", "type": "ticket.created"}'),
)


def valid_event(index: int, rng: random.Random, *, seller_id: str = "seller_1") -> dict[str, Any]:
    data: dict[str, Any] = {
        "seller_id": seller_id,
        "ticket_id": f"T-{index:06d}",
        "topic": TOPICS[index % len(TOPICS)],
        "created_at": f"2026-11-27T10:{index // 60 % 60:02d}:{index % 60:02d}Z",
        "author": {"role": ROLES[index % len(ROLES)], "name": f"Customer {index}"},
        "subject": f"Question about order {1000 + index}",
        "message": rng.choice(("Where is my parcel?", "Can I return this?", "Thank you!")),
        "marketplace_internal_score": rng.random(),  # ignored by the mapping, never sent
    }
    if index % 2 == 0:
        data["reference"] = {"type": REFERENCES[index % len(REFERENCES)], "id": f"O-{index}"}
    if index % 5 == 0:
        data["reply_requested"] = False
    if index % 7 == 0:
        data["attachments"] = [{"filename": "photo.png", "content_type": "image/png"}]
    return {
        "id": f"evt-{index:06d}",
        "type": "ticket.created",
        "time": data["created_at"],
        "data": data,
    }


def invalid_events(index: int) -> Iterator[tuple[str, bytes]]:
    """Bad bodies: the fixed classes, plus events that break the schema."""
    yield from INVALID_SAMPLES
    bad = valid_event(index, random.Random(index))
    bad["id"] = f"evt-invalid-{index}"
    bad["data"]["created_at"] = "2026-11-27T10:00:00"  # no UTC offset: ambiguous
    yield "invalid", orjson.dumps(bad)
    bad["data"]["created_at"] = "2026-11-27T10:00:00Z"
    bad["data"]["topic"] = "complaint"
    yield "invalid", orjson.dumps(bad)


def sample_lines(count: int, *, invalid: int = 0, seed: int = 7) -> Iterator[bytes]:
    """``count`` valid events, then ``invalid`` bad bodies cycling through the classes."""
    rng = random.Random(seed)
    for index in range(count):
        yield orjson.dumps(valid_event(index, rng))
    bad = [body for _, body in invalid_events(count)]
    for index in range(invalid):
        yield bad[index % len(bad)]
