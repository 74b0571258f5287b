"""The soak's books: everything sent, everything that arrived, and the reconciliation.

The ledger is written as traffic leaves (``Ledger.published``, ``Ledger.injected``) and as
the run watches the far ends: the emulator (``read_scx``, the one function that knows how
the emulator records tickets, files and seller events: its conversation ledger, read per
conversation and message, and its files by their per-message upload names), the
dead-letter queue, and the tap
(every seller-event message and outcome event the exchange carried). At the end
``reconcile`` compares them and returns every discrepancy by name:

===============================  ==========================================================
problem                          meaning
===============================  ==========================================================
``lost``                         a valid message never reached SCX
``file missing``                 a file of a forwarded message is not in SCX under its
                                 upload name, or the message does not name it
``file differs``                 a file is in SCX with other bytes than were sent
``invalid sent``                 an invalid message reached SCX
``invalid not dead-lettered``    an invalid message is not in the DLQ
``wrong kind``                   an invalid message is in the DLQ with another x-error-kind
``valid dead-lettered``          a valid message is in the DLQ
``unknown in SCX``               SCX holds a message no one sent
``seller event not acked``       SCX still holds a seller event at the end
``seller event given up``        SCX gave an event up after its 10 deliveries
``seller event not published``   a seller event was acknowledged, a message of it is missing
``seller file differs``          a reply's file was published with other bytes
``seller copy differs``          two copies of a seller-event message are not byte-identical
``outcome missing``              a message settled without its outcome event
``process``                      a process exited on its own, or not within its grace
``secret``                       a log line holds a secret
``left in queues``               messages left in the work queue or its delay queues
``duplicates over the bound``    more duplicates of a kind than the README's bound allows
===============================  ==========================================================

Duplicates are counted per kind and held to ``bound_*`` (the README's "What it promises").
A reply's file that kept failing until the bridge's ``EVENTS_DELIVERY_TRIES``-th delivery is
published marked ``unavailable`` in the reply (docs/guides/rate-limits-and-events.md): that is
the bridge's documented outcome, not a loss, and is counted (``reply files unavailable``).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests.reliability.harness import DeadCopy
from tests.soak.traffic import REPLY_KEY, SELLER, Invalid, Message, SellerEvent
from worker.emulator import Emulator

# The README's bound ("What it promises"): a lost connection or a crash returns at most the
# AMQP_PREFETCH deliveries it held unacked, each of which may have been sent already; so at
# most AMQP_PREFETCH duplicate tickets per worker per lost connection (or crash).
DUPLICATES_PER_LOSS = "AMQP_PREFETCH"
# With the progress record on, at most the step in flight per message is repeated (README
# "Progress record"): per crash or lost connection, at most one file for each message that
# holds files at once (WORKER_ATTACHMENT_CONCURRENCY).
FILE_DUPLICATES_PER_LOSS = "WORKER_ATTACHMENT_CONCURRENCY"
# The bridge (README "Guarantees" of `scx-forwarder events`): a crash or a lost connection
# between the broker's confirm and SCX's acknowledgement publishes the batch in hand again,
# byte for byte: at most EVENTS_BATCH_SIZE events per bridge per loss.
EVENT_DUPLICATES_PER_LOSS = "EVENTS_BATCH_SIZE"

_EVENT_ID = re.compile(r"^\[(evt-[a-z0-9-]+)\]")


@dataclass
class ScxView:
    """What SCX (the emulator) holds, per message rather than per ticket id."""

    messages: Counter[str]  # event id -> accepted POSTs of it in its conversation
    attachment_names: dict[str, frozenset[str]]  # event id -> filenames its ticket names
    unknown: list[str]  # accepted tickets that name no event id of ours
    files: dict[tuple[str, str], tuple[str, int]]  # (ticket id, filename) -> (sha256, stores)
    events_acked: Counter[str]  # seller event id -> acknowledgements
    events_pending: int  # seller events not acknowledged
    given_up: frozenset[str]  # seller events SCX dropped after their last delivery


def read_scx(emulator: Emulator, ledger: Ledger) -> ScxView:
    """The emulator's books, per message: the one place that knows how it records them.

    Each conversation of the ledger is looked up in the emulator's conversation ledger
    (``Emulator.tickets``, keyed by (sellerId, ticketId)); a message in it is matched to the
    message it came from by the event id at the start of its text. Anything accepted that
    is not a message of a known conversation (an invalid message sent, a ticket no one
    published) is found in the emulator's list of accepted bodies. Files are read by
    (ticketId, upload name): the per-message names of ``tests.soak.traffic.upload_names``.
    """
    messages: Counter[str] = Counter()
    names: dict[str, frozenset[str]] = {}
    for conversation_id in {m.conversation for m in ledger.messages.values()}:
        conversation = emulator.tickets.get((SELLER, conversation_id))
        for message in conversation.messages if conversation is not None else ():
            match = _EVENT_ID.match(str(message.body.get("message", "")))
            if match is None:
                continue
            event_id = match.group(1)
            known = ledger.messages.get(event_id)
            if known is None or known.conversation != conversation_id:
                continue  # found below, among the unknown
            messages[event_id] += message.posts
            names[event_id] = frozenset(
                str(item.get("filename")) for item in message.body.get("attachment") or ()
            )
    unknown: list[str] = []
    for body in emulator.state.accepted:
        match = _EVENT_ID.match(str(body.get("message", "")))
        event_id = match.group(1) if match is not None else None
        if body.get("sellerId") != SELLER or event_id not in messages:
            unknown.append(event_id or str(body.get("ticketId")))
    files = {
        (key[1], key[2]): (stored.sha256, emulator.files.stores[key])
        for key, stored in emulator.files.files.items()
        if key[0] == SELLER
    }
    events = emulator.events.ledger
    return ScxView(
        messages,
        names,
        unknown,
        files,
        events.acked_counts,
        emulator.events.pending,
        frozenset(events.given_up_ids),
    )


def accepted_since(emulator: Emulator, since: int) -> tuple[list[str], int]:
    """Event ids of the tickets accepted from index ``since`` on, and the next index."""
    accepted = emulator.state.accepted
    out = []
    for body in accepted[since:]:
        match = _EVENT_ID.match(str(body.get("message", "")))
        if match is not None:
            out.append(match.group(1))
    return out, len(accepted)


@dataclass
class TapCopy:
    routing_key: str
    message_id: str
    digest: str
    outcome_of: str | None  # for an outcome event: the event id it is about
    unavailable: frozenset[str] = frozenset()  # a reply: the files it marks not delivered


def tap_copy(routing_key: str, message_id: str | None, body: bytes) -> TapCopy:
    outcome_of = None
    unavailable: frozenset[str] = frozenset()
    if routing_key in ("ticket.forwarded", "ticket.dead_lettered"):
        try:
            data = orjson.loads(body).get("data") or {}
            outcome_of = data.get("event_id") or data.get("message_id")
        except (orjson.JSONDecodeError, AttributeError):
            outcome_of = None
    elif routing_key == REPLY_KEY:
        try:
            attachments = (orjson.loads(body).get("data") or {}).get("attachments") or []
            unavailable = frozenset(
                str(a.get("filename")) for a in attachments if a.get("unavailable") is not None
            )
        except (orjson.JSONDecodeError, AttributeError):
            unavailable = frozenset()
    digest = hashlib.sha256(body).hexdigest()
    return TapCopy(routing_key, str(message_id), digest, outcome_of, unavailable)


@dataclass
class Ledger:
    """Everything the soak sent, and when."""

    messages: dict[str, Message] = field(default_factory=dict)
    invalid: dict[str, Invalid] = field(default_factory=dict)
    seller_events: dict[str, SellerEvent] = field(default_factory=dict)
    published_at: dict[str, float] = field(default_factory=dict)  # message id -> run clock
    # Messages the soak itself published more than once (a publish whose confirm was lost to
    # a fault is published again): their extra copies are the publisher's, not the worker's.
    republished: Counter[str] = field(default_factory=Counter)
    accepted_at: dict[str, float] = field(default_factory=dict)  # event id -> first seen in SCX
    # Reply files the bridge published as unavailable (failing until its last try).
    unavailable: set[str] = field(default_factory=set)

    def published(self, item: Message | Invalid, at: float) -> None:
        if isinstance(item, Message):
            self.messages[item.event_id] = item
            key = item.event_id
        else:
            self.invalid[item.message_id] = item
            key = item.message_id
        if key in self.published_at:
            self.republished[key] += 1
        else:
            self.published_at[key] = at

    def injected(self, event: SellerEvent) -> None:
        self.seller_events[event.event_id] = event

    def seen_accepted(self, event_ids: list[str], at: float) -> None:
        for event_id in event_ids:
            self.accepted_at.setdefault(event_id, at)

    def longest_wait(self) -> tuple[str | None, float]:
        """The message that waited longest from its publish to SCX, and how long."""
        worst, longest = None, 0.0
        for event_id, at in self.accepted_at.items():
            wait = at - self.published_at.get(event_id, at)
            if wait > longest:
                worst, longest = event_id, wait
        return worst, longest


@dataclass
class Losses:
    """What the bounds are made of: crashes and lost connections, per side."""

    worker: int  # worker kills (-9 and SIGTERM) + the workers' broker.disconnected lines
    bridge: int  # bridge kills + the bridges' lost connections
    prefetch: int
    attachment_concurrency: int
    events_batch: int


@dataclass
class Books:
    counts: dict[str, int]
    duplicates: dict[str, int]
    bounds: dict[str, int]
    problems: dict[str, list[str]]

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def summary(self, limit: int = 8) -> str:
        return "; ".join(
            f"{what}: {len(items)} ({', '.join(items[:limit])})"
            for what, items in self.problems.items()
            if items
        )


Problems = dict[str, list[str]]


def reconcile(
    ledger: Ledger,
    scx: ScxView,
    dead: list[DeadCopy],
    tap: list[TapCopy],
    losses: Losses,
    *,
    process_problems: list[str],
    secrets_found: list[str],
    leftovers: dict[str, int],
) -> Books:
    problems: Problems = {}
    ticket_dups, file_dups = _tickets(ledger, scx, problems)
    by_id, dlq_dups = _dead_letters(ledger, dead, problems)
    event_dups, message_dups, outcomes = _seller_events(ledger, scx, tap, problems)
    outcome_dups = _outcomes(ledger, scx, by_id, outcomes, problems)
    problems["process"] = list(process_problems)
    problems["secret"] = list(secrets_found)
    problems["left in queues"] = [f"{q}: {n}" for q, n in leftovers.items() if n]
    bounds = {
        "tickets": losses.prefetch * losses.worker,
        "files": losses.attachment_concurrency * losses.worker,
        "seller events": losses.events_batch * losses.bridge,
    }
    duplicates = {
        "tickets": ticket_dups,
        "files": file_dups,
        "seller events": event_dups,
        "seller messages": message_dups,
        "dead letters": dlq_dups,
        "outcome events": outcome_dups,
    }
    problems["duplicates over the bound"] = [
        f"{kind}: {duplicates[kind]} > {bound}"
        for kind, bound in bounds.items()
        if duplicates[kind] > bound
    ]
    messages = ledger.messages.values()
    counts = {
        "messages": len(ledger.messages),
        "conversations": len({m.conversation for m in messages}),
        "files": sum(len(m.files) for m in messages),
        "files by URL": sum(f.by_url for m in messages for f in m.files),
        "invalid": len(ledger.invalid),
        "seller events": len(ledger.seller_events),
        "seller files": sum(len(e.files) for e in ledger.seller_events.values()),
        "forwarded": sum(1 for event_id in ledger.messages if scx.messages[event_id]),
        "dead-lettered": len(by_id),
        "seller events acked": sum(1 for e in ledger.seller_events if scx.events_acked[e]),
        "seller event types": len({e.event_type for e in ledger.seller_events.values()}),
        "reply files unavailable": len(ledger.unavailable),
        "republished by the soak": sum(ledger.republished.values()),
    }
    return Books(counts, duplicates, bounds, {k: v for k, v in problems.items() if v})


def _flag(problems: Problems, what: str, item: str) -> None:
    problems.setdefault(what, []).append(item)


def _tickets(ledger: Ledger, scx: ScxView, problems: Problems) -> tuple[int, int]:
    """Each valid message in SCX at least once with its files, nothing else; the duplicates
    of tickets and of files."""
    ticket_dups = 0
    for event_id, message in ledger.messages.items():
        got = scx.messages[event_id]
        if got == 0:
            _flag(problems, "lost", event_id)
        ticket_dups += max(0, got - 1 - ledger.republished[event_id])
        named = scx.attachment_names.get(event_id, frozenset())
        for file, name in zip(message.files, message.upload_names, strict=True):
            stored = scx.files.get((message.ticket_id, name))
            where = f"{message.ticket_id}/{name} ({event_id})"
            if got and (stored is None or name not in named):
                _flag(problems, "file missing", where)
            elif stored is not None and stored[0] != file.sha256:
                _flag(problems, "file differs", where)
    for message_id in ledger.invalid:
        if scx.messages[message_id]:
            _flag(problems, "invalid sent", message_id)
    for ticket_id in scx.unknown:
        _flag(problems, "unknown in SCX", ticket_id)
    expected = {(m.ticket_id, name) for m in ledger.messages.values() for name in m.upload_names}
    for key in scx.files.keys() - expected:
        _flag(problems, "unknown in SCX", f"file {key[0]}/{key[1]}")
    file_dups = sum(stores - 1 for key, (_, stores) in scx.files.items() if key in expected)
    return ticket_dups, file_dups


def _dead_letters(
    ledger: Ledger, dead: list[DeadCopy], problems: Problems
) -> tuple[dict[str, list[str]], int]:
    """Every invalid message in the DLQ with its kind, nothing valid; copies by message id."""
    by_id: dict[str, list[str]] = {}
    for dead_copy in dead:
        by_id.setdefault(dead_copy.message_id or "", []).append(dead_copy.kind or "broker")
    dups = 0
    for message_id, kinds in by_id.items():
        invalid = ledger.invalid.get(message_id)
        if invalid is None:
            what = "valid dead-lettered" if message_id in ledger.messages else "unknown in DLQ"
            _flag(problems, what, f"{message_id} as {kinds}")
            continue
        if any(kind != invalid.kind for kind in kinds):
            _flag(
                problems,
                "wrong kind",
                f"{message_id} ({invalid.label}) as {kinds}, not {invalid.kind}",
            )
        dups += max(0, len(kinds) - 1 - ledger.republished[message_id])
    for message_id, invalid in ledger.invalid.items():
        if message_id not in by_id:
            _flag(problems, "invalid not dead-lettered", f"{message_id} ({invalid.label})")
    return by_id, dups


def _seller_events(
    ledger: Ledger, scx: ScxView, tap: list[TapCopy], problems: Problems
) -> tuple[int, int, Counter[tuple[str, str]]]:
    """Every seller event acknowledged, every message of it published, copies identical.

    Returns the events published more than once, the extra message copies, and the outcome
    events by (type, event id)."""
    copies: dict[str, list[TapCopy]] = {}
    outcomes: Counter[tuple[str, str]] = Counter()
    for tapped in tap:
        if tapped.outcome_of is not None:
            outcomes[(tapped.routing_key, tapped.outcome_of)] += 1
        else:
            copies.setdefault(tapped.message_id, []).append(tapped)
    event_dups = message_dups = 0
    for event_id, event in ledger.seller_events.items():
        if event_id in scx.given_up:
            _flag(problems, "seller event given up", f"{event_id} ({event.event_type})")
            continue
        if scx.events_acked[event_id] == 0:
            _flag(problems, "seller event not acked", event_id)
            continue
        replies = copies.get(event_id, [])
        unavailable = frozenset().union(*(c.unavailable for c in replies))
        repeated = 0
        for message_id, (key, data) in event.expected.items():
            got = copies.get(message_id, [])
            if not got and message_id.rpartition("/")[2] in unavailable:
                ledger.unavailable.add(message_id)
                continue
            if not got or got[0].routing_key != key:
                _flag(problems, "seller event not published", f"{message_id} ({key})")
                continue
            if data is not None and got[0].digest != hashlib.sha256(data).hexdigest():
                _flag(problems, "seller file differs", message_id)
            if any(c.digest != got[0].digest for c in got[1:]):
                _flag(problems, "seller copy differs", message_id)
            repeated = max(repeated, len(got) - 1)
            message_dups += len(got) - 1
        event_dups += repeated
    return event_dups, message_dups, outcomes


def _outcomes(
    ledger: Ledger,
    scx: ScxView,
    dead: dict[str, list[str]],
    outcomes: Counter[tuple[str, str]],
    problems: Problems,
) -> int:
    """One outcome event per settled message; returns the extra ones."""
    dups = 0
    for event_id in ledger.messages:
        n = outcomes[("ticket.forwarded", event_id)]
        if n == 0 and scx.messages[event_id]:
            _flag(problems, "outcome missing", f"ticket.forwarded {event_id}")
        dups += max(0, n - 1)
    for message_id in ledger.invalid:
        n = outcomes[("ticket.dead_lettered", message_id)]
        if n == 0 and message_id in dead:
            _flag(problems, "outcome missing", f"ticket.dead_lettered {message_id}")
        dups += max(0, n - 1)
    return dups


def invalid_classes(ledger: Ledger) -> dict[str, int]:
    return dict(Counter(item.label for item in ledger.invalid.values()))


def to_json(books: Books) -> dict[str, Any]:
    return {
        "counts": books.counts,
        "duplicates": books.duplicates,
        "bounds": books.bounds,
        "problems": {k: v[:50] for k, v in books.problems.items() if v},
    }
