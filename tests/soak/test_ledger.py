"""The soak's books without a run: what ``reconcile`` calls a loss and what it does not.

Built from a seeded ``Traffic`` and a hand-made view of SCX, so each rule is checked on its
own: a message is found by conversation and message, a file by its per-message upload name,
an event SCX gave up fails the run, and a reply file published as ``unavailable`` (the
bridge's documented outcome after its last try) is counted, not lost.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import orjson

from tests.reliability.harness import DeadCopy
from tests.soak.ledger import Books, Ledger, Losses, ScxView, TapCopy, reconcile, tap_copy
from tests.soak.traffic import REPLY_KEY, SELLER_EVENT_TYPES, Message, Traffic


def _traffic() -> Traffic:
    return Traffic(random.Random(7), lambda path, data, ct: f"http://files/{path}", file_share=1)


def _books(ledger: Ledger, scx: ScxView, tap: Sequence[TapCopy] = ()) -> Books:
    """Reconciled with every invalid message in the DLQ and every outcome event on the tap."""
    outcomes = [
        tap_copy("ticket.forwarded", None, orjson.dumps({"data": {"event_id": e}}))
        for e in ledger.messages
    ] + [
        tap_copy("ticket.dead_lettered", None, orjson.dumps({"data": {"message_id": m}}))
        for m in ledger.invalid
    ]
    return reconcile(
        ledger,
        scx,
        [DeadCopy(b"", i.kind, i.message_id) for i in ledger.invalid.values()],
        [*tap, *outcomes],
        Losses(0, 0, 64, 4, 100),
        process_problems=[],
        secrets_found=[],
        leftovers={},
    )


def _everything_in_scx(ledger: Ledger) -> ScxView:
    messages = Counter({event_id: 1 for event_id in ledger.messages})
    names = {e: frozenset(m.upload_names) for e, m in ledger.messages.items()}
    files = {
        (m.ticket_id, name): (f.sha256, 1)
        for m in ledger.messages.values()
        for f, name in zip(m.files, m.upload_names, strict=True)
    }
    acked = Counter(dict.fromkeys(ledger.seller_events, 1))
    return ScxView(messages, names, [], files, acked, 0, frozenset())


def _ledger(count: int = 40) -> Ledger:
    ledger = Ledger()
    traffic = _traffic()
    for item in traffic.next_items(count):
        ledger.published(item, 0.0)
    return ledger


def test_follow_ups_share_the_ticket_id_and_their_files_get_per_message_names() -> None:
    """Messages of one conversation go under its id; no two files share an upload name."""
    ledger = _ledger(200)
    by_conversation: dict[str, list[Message]] = {}
    for message in ledger.messages.values():
        by_conversation.setdefault(message.conversation, []).append(message)
        assert orjson.loads(message.body)["data"]["ticket_id"] == message.conversation
    assert any(len(messages) > 1 for messages in by_conversation.values())
    for messages in by_conversation.values():
        names = [name for m in messages for name in m.upload_names]
        assert len(names) == len(set(names))


def test_books_balance_when_everything_arrived() -> None:
    ledger = _ledger()
    assert _books(ledger, _everything_in_scx(ledger)).problems == {}


def test_a_file_under_the_sender_name_is_missing() -> None:
    """A file stored under its plain name (not the message's upload name) is not found."""
    ledger = _ledger()
    scx = _everything_in_scx(ledger)
    message = next(m for m in ledger.messages.values() if m.files)
    name = message.upload_names[0]
    del scx.files[(message.ticket_id, name)]
    scx.files[(message.ticket_id, message.files[0].filename)] = (message.files[0].sha256, 1)

    problems = _books(ledger, scx).problems

    assert problems["file missing"] == [f"{message.ticket_id}/{name} ({message.event_id})"]
    assert "unknown in SCX" in problems


def test_every_event_type_and_an_event_scx_gave_up() -> None:
    """All 20 types come out; an event given up after its 10th delivery fails the run."""
    traffic = _traffic()
    events = traffic.seller_events(40)
    assert {e.event_type for e in events} == set(SELLER_EVENT_TYPES)
    ledger = Ledger()
    for event in events:
        ledger.injected(event)
    scx = _everything_in_scx(ledger)
    lost = events[1]
    tap = [
        tap_copy(key, message_id, data if data is not None else b"{}")
        for event in events
        if event is not lost
        for message_id, (key, data) in event.expected.items()
    ]
    scx = ScxView(
        scx.messages,
        scx.attachment_names,
        [],
        scx.files,
        scx.events_acked,
        0,
        frozenset({lost.event_id}),
    )

    problems = _books(ledger, scx, tap).problems

    assert problems == {"seller event given up": [f"{lost.event_id} ({lost.event_type})"]}


def test_a_reply_file_marked_unavailable_is_counted_not_lost() -> None:
    """The bridge's last try publishes the reply with the file marked unavailable."""
    reply = next(e for e in _traffic().seller_events(40) if len(e.expected) > 1)
    ledger = Ledger()
    ledger.injected(reply)
    scx = _everything_in_scx(ledger)
    files = [m for m in reply.expected if "/" in m]
    attachments = [
        {"filename": m.rpartition("/")[2], "unavailable": {"status": 503}} for m in files
    ]
    body = orjson.dumps({"data": {"attachments": attachments}})

    books = _books(ledger, scx, [tap_copy(REPLY_KEY, reply.event_id, body)])

    assert books.problems == {}
    assert books.counts["reply files unavailable"] == len(files)
