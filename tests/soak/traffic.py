"""The soak's traffic, all drawn from one ``random.Random(seed)``: the same seed, the same run.

Three streams, each item written into the ledger (``tests.soak.ledger``) before it leaves:

- **conversations** of 1 to 4 ticket messages: the buyer's question, then follow-ups by the
  buyer or the marketplace's staff (``role: channel``), all under the conversation's
  ``ticket_id`` (as a marketplace publishes them, issue 17), each with its own CloudEvents
  ``id`` and ``created_at``; a third of the messages carry 1 to 3 files, by URL from the
  soak's file server or inline as ``content_base64``. Each message knows the names its files
  must have in SCX (``Message.upload_names``: the worker's own ``assign_names`` with the
  message's discriminator), and names its event id in its text (``[evt-…]``), which is how
  the emulator's conversation ledger is read per message (``tests.soak.ledger.read_scx``);
- **invalid events**, one of every class the worker dead-letters before calling the API
  (``INVALID_CLASSES``), each with the ``x-error-kind`` it must get;
- **seller events** injected into the emulator, cycling through all 20 types in JTL's shapes
  (``worker.emulator.events.EXAMPLE_PAYLOADS``), each with the routing key the bridge must
  publish it under; the ``Seller:Ticket.Reply`` among them carry 0 to 3 files.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from worker.emulator.events import EXAMPLE_PAYLOADS, example_event, ticket_reply
from worker.events.mapping import ATTACHMENT_KEY, REPLY_TYPE, routing_key
from worker.forward.attachments.names import NameRequest, assign_names
from worker.forward.identity import message_identity
from worker.ops.samples import REFERENCES, TOPICS

SELLER = "soak_seller"
# Replies come from another seller than the tickets go to: their files live in the same
# emulator store, keyed (seller, ticket, filename), and must never be taken for an upload.
REPLY_SELLER = "soak_replies"
FILE_TYPES = (("png", "image/png"), ("txt", "text/plain"), ("pdf", "application/pdf"))
# Every seller event type, in JTL's order; the soak cycles through them.
SELLER_EVENT_TYPES: tuple[str, ...] = tuple(EXAMPLE_PAYLOADS)
OTHER_EVENT_TYPES = tuple(t for t in SELLER_EVENT_TYPES if t != REPLY_TYPE)
# The bridge's routing key of a reply (EVENTS_TICKET_REPLY_KEY's default).
REPLY_KEY = "ticket.replied"


@dataclass(frozen=True)
class File:
    filename: str
    content_type: str
    data: bytes = field(repr=False)
    by_url: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Message:
    """One valid ticket message: what was published and what SCX must end up with."""

    event_id: str
    conversation: str
    ticket_id: str  # the conversation's ticket id, shared by its messages
    position: int  # 1 for the question, 2-4 for follow-ups
    body: bytes = field(repr=False)
    files: tuple[File, ...] = ()
    upload_names: tuple[str, ...] = ()  # each file's name in SCX, in order


@dataclass(frozen=True)
class Invalid:
    """A body the worker must dead-letter, never send: its class and the kind it must get."""

    message_id: str
    label: str
    kind: str
    body: bytes = field(repr=False)


@dataclass
class SellerEvent:
    """An event injected into the emulator and the messages the bridge must publish for it."""

    event_id: str
    event_type: str
    item: dict[str, Any] = field(repr=False)
    files: list[dict[str, Any]] = field(repr=False, default_factory=list)
    # message_id -> (routing key, the file's bytes; None for a JSON body)
    expected: dict[str, tuple[str, bytes | None]] = field(default_factory=dict)


Publishable = Message | Invalid


def upload_names(event_id: str, files: tuple[File, ...]) -> tuple[str, ...]:
    """The names the worker uploads ``files`` of message ``event_id`` under: unique within
    the conversation by the message's discriminator (``worker.forward.attachments.names``)."""
    requests = [NameRequest(f.filename, f.content_type, uploaded=True) for f in files]
    discriminator = message_identity(event_id, None, b"").discriminator
    return tuple(assign_names(requests, discriminator))


def _event(event_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": event_id, "type": "ticket.created", "time": data["created_at"], "data": data}


def _spoil(mutate: Callable[[dict[str, Any]], object]) -> Callable[[dict[str, Any]], bytes]:
    def build(event: dict[str, Any]) -> bytes:
        mutate(event)
        return orjson.dumps(event)

    return build


def _set(path: tuple[str, ...], value: object) -> Callable[[dict[str, Any]], object]:
    def mutate(event: dict[str, Any]) -> None:
        target = event
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


# Every class of bad input the worker dead-letters before any API call (the classes of
# tests/reliability/test_bad_input.py and the attachment sources' own): label -> (kind, the
# body made from a valid event of the stream).
INVALID_CLASSES: dict[str, tuple[str, Callable[[dict[str, Any]], bytes]]] = {
    "not UTF-8": ("malformed", lambda e: b"\xff\xfe not utf-8 " + e["id"].encode()),
    "not JSON": ("malformed", lambda e: b"{not json " + e["id"].encode()),
    "JSON not an object": ("malformed", lambda e: orjson.dumps([e["id"], 2, 3])),
    "no data": ("invalid", lambda e: orjson.dumps({"id": e["id"], "type": "ticket.created"})),
    "data not an object": ("invalid", _spoil(_set(("data",), "text"))),
    "created_at without offset": (
        "invalid",
        _spoil(_set(("data", "created_at"), "2026-11-27T10:00:00")),
    ),
    "topic not in the enum": ("invalid", _spoil(_set(("data", "topic"), "complaint"))),
    "author name too long": ("invalid", _spoil(_set(("data", "author", "name"), "x" * 101))),
    "message too long": ("invalid", _spoil(_set(("data", "message"), "y" * 5000))),
    "seller id off the pattern": ("invalid", _spoil(_set(("data", "seller_id"), "a b"))),
    "eleven attachments": (
        "invalid",
        _spoil(
            _set(
                ("data", "attachments"),
                [{"filename": f"f{i}.png", "content_type": "image/png"} for i in range(11)],
            )
        ),
    ),
    "API shape, incomplete": (
        "invalid",
        lambda e: orjson.dumps({"sellerId": SELLER, "ticketId": e["id"], "topic": "QUESTION"}),
    ),
    "URL outside the allow-list": (
        "invalid",
        _spoil(
            _set(
                ("data", "attachments"),
                [{"filename": "a.png", "content_type": "image/png", "url": "http://192.0.2.1/a"}],
            )
        ),
    ),
    "base64 that is not": (
        "invalid",
        _spoil(
            _set(
                ("data", "attachments"),
                [{"filename": "a.png", "content_type": "image/png", "content_base64": "%%%"}],
            )
        ),
    ),
    "type the API refuses": (
        "invalid",
        _spoil(
            _set(
                ("data", "attachments"),
                [
                    {
                        "filename": "a.exe",
                        "content_type": "application/x-msdownload",
                        "content_base64": "AAAA",
                    }
                ],
            )
        ),
    ),
}


class Traffic:
    """Draws every published body and injected seller event from one seeded generator.

    ``put_file(path, data, content_type)`` puts a file on the soak's file server and returns
    its URL.
    """

    def __init__(
        self,
        rng: random.Random,
        put_file: Callable[[str, bytes, str], str],
        *,
        invalid_share: float = 0.03,
        file_share: float = 0.33,
    ) -> None:
        self.rng = rng
        self.put_file = put_file
        self.invalid_share = invalid_share
        self.file_share = file_share
        self._conversations = itertools.count(1)
        self._messages = itertools.count(1)
        self._bad = itertools.count(1)
        self._seller = itertools.count(1)
        # Conversations with messages still to come: (conversation id, next position, last).
        self._open: list[tuple[str, int, int]] = []

    def next_items(self, count: int) -> list[Publishable]:
        items: list[Publishable] = []
        for _ in range(count):
            if self.rng.random() < self.invalid_share:
                items.append(self._invalid())
            else:
                items.append(self._message())
        return items

    def _message(self) -> Message:
        rng = self.rng
        if self._open and rng.random() < 0.5:
            conversation, position, last = self._open.pop(rng.randrange(len(self._open)))
        else:
            conversation, position, last = (
                f"SOAK-{next(self._conversations):06d}",
                1,
                rng.randint(1, 4),
            )
        if position < last:
            self._open.append((conversation, position + 1, last))
        n = next(self._messages)
        event_id = f"evt-soak-{n:07d}"
        ticket_id = conversation
        role = "buyer" if position == 1 else rng.choice(("buyer", "buyer", "channel"))
        data: dict[str, Any] = {
            "seller_id": SELLER,
            "ticket_id": ticket_id,
            "topic": TOPICS[n % len(TOPICS)],
            "created_at": f"2026-11-27T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}Z",
            "author": {"role": role, "name": f"Customer {n % 997}"},
            "subject": f"Order {1000 + n % 5000}",
            # The event id in the text: the emulator's ledger is read per message by it.
            "message": f"[{event_id}] message {position} of {conversation}",
        }
        if position == 1 and n % 2 == 0:
            data["reference"] = {"type": REFERENCES[n % len(REFERENCES)], "id": f"O-{n}"}
        files: list[File] = []
        if rng.random() < self.file_share:
            files = [self._file(n, k) for k in range(1, rng.randint(1, 3) + 1)]
            data["attachments"] = [self._source(file, event_id) for file in files]
        body = orjson.dumps(_event(event_id, data))
        attached = tuple(files)
        return Message(
            event_id,
            conversation,
            ticket_id,
            position,
            body,
            attached,
            upload_names(event_id, attached),
        )

    def _file(self, n: int, k: int) -> File:
        ext, content_type = self.rng.choice(FILE_TYPES)
        size = self.rng.choice((0, 1, 200, 4_000, 40_000, 120_000))
        by_url = self.rng.random() < 0.5
        # An empty file can only come by URL: inline, it would be an empty (invalid) base64.
        data = self.rng.randbytes(size if by_url else max(size, 1))
        return File(f"m{n}_{k}.{ext}", content_type, data, by_url=by_url)

    def _source(self, file: File, event_id: str) -> dict[str, Any]:
        item: dict[str, Any] = {"filename": file.filename, "content_type": file.content_type}
        if file.by_url:
            item["url"] = self.put_file(f"{event_id}/{file.filename}", file.data, file.content_type)
        else:
            item["content_base64"] = base64.b64encode(file.data).decode()
        return item

    def _invalid(self) -> Invalid:
        k = next(self._bad)
        labels = list(INVALID_CLASSES)
        label = labels[k % len(labels)]
        kind, build = INVALID_CLASSES[label]
        message_id = f"evt-bad-{k:06d}"
        data = {
            "seller_id": SELLER,
            "ticket_id": f"BAD-{k:06d}",
            "topic": "question",
            "created_at": "2026-11-27T10:00:00Z",
            "author": {"role": "buyer", "name": "Mallory"},
            "subject": "bad",
            "message": f"[{message_id}] bad input",
        }
        return Invalid(message_id, label, kind, build(_event(message_id, data)))

    def seller_events(self, count: int) -> list[SellerEvent]:
        """``count`` seller events: every other one a reply with 0 to 3 files, the others
        cycling through the 19 other types."""
        out = []
        for _ in range(count):
            n = next(self._seller)
            event_id = f"sev-soak-{n:07d}"
            if n % 2 == 0:
                out.append(self._reply(event_id, n))
                continue
            event_type = OTHER_EVENT_TYPES[n // 2 % len(OTHER_EVENT_TYPES)]
            event = SellerEvent(event_id, event_type, example_event(event_type, event_id))
            event.expected[event_id] = (routing_key(event_type), None)
            out.append(event)
        return out

    def _reply(self, event_id: str, n: int) -> SellerEvent:
        ticket_id = f"CASE-{n:07d}"
        names = [f"r{n}_{k}.bin" for k in range(self.rng.choice((0, 1, 1, 2, 3)))]
        item = ticket_reply(
            event_id,
            seller_id=REPLY_SELLER,
            ticket_id=ticket_id,
            message=f"reply {n}",
            name="Support" if n % 2 else None,
            attachments=[(name, "application/octet-stream") for name in names],
        )
        event = SellerEvent(event_id, REPLY_TYPE, item)
        for name in names:
            data = self.rng.randbytes(self.rng.choice((0, 300, 20_000, 70_000)))
            event.files.append(
                {
                    "sellerId": REPLY_SELLER,
                    "ticketId": ticket_id,
                    "filename": name,
                    "contentType": "application/octet-stream",
                    "data": data,
                }
            )
            event.expected[f"{event_id}/{name}"] = (ATTACHMENT_KEY, data)
        event.expected[event_id] = (REPLY_KEY, None)
        return event
