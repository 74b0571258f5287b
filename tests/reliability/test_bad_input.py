"""Arbitrary bodies, property-based: the worker never crashes and every message ends forwarded
or dead-lettered with the right kind.

One worker process serves the whole property; Hypothesis generates batches of bodies (random
bytes, random JSON, and valid events with one field mutated), runs in a thread of its own and
hands each batch to the test's event loop, which publishes it and waits for every outcome.
Each generated body carries the outcomes it may have: a mutation known to break the contract
must be dead-lettered as ``invalid``, one known to keep it must be forwarded, a random value
may go either way, but never as ``rejected`` (the worker sent something invalid) or
``exhausted``, and never lost.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta, timezone
from typing import Any

import aio_pika
import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.reliability.harness import DeadLetters, Fleet, MakeFleet, Record, leftovers
from tests.support.broker import Names
from tests.support.endpoints import AMQP_URL
from worker.emulator import Emulator
from worker.ops.samples import ROLES, TOPICS, valid_event

EXAMPLES = 24
BATCH = (80, 100)  # bodies per example: at least 1,920 in all, about 2,160 on average

FORWARDED, MALFORMED, INVALID = "forwarded", "malformed", "invalid"


@dataclass(frozen=True)
class Case:
    label: str
    body: bytes
    allowed: frozenset[str]
    ticket_id: str | None = None  # its key in the emulator's ledger, if it may be forwarded


# --- bodies ----------------------------------------------------------------------------------

_ids = itertools.count()

int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what orjson can write
json_values = st.recursive(
    st.none()
    | st.booleans()
    | int64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)


def _decoded_kind(body: bytes) -> str:
    """Independently of the worker: not a UTF-8 JSON object is malformed, an object invalid."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return MALFORMED
    return INVALID if isinstance(value, dict) else MALFORMED


random_bytes = st.binary(max_size=300).map(
    lambda body: Case("random bytes", body, frozenset({_decoded_kind(body)}))
)
random_json = json_values.map(orjson.dumps).map(
    lambda body: Case("random JSON", body, frozenset({_decoded_kind(body)}))
)

REQUIRED = ("seller_id", "ticket_id", "topic", "created_at", "author", "subject", "message")
STRING_FIELDS = ("seller_id", "ticket_id", "topic", "created_at", "subject", "message")
SELLER_ID = re.compile(r"[A-Za-z0-9_]{1,50}")  # the README's rule, not the worker's code
not_a_string = st.none() | st.booleans() | int64 | st.lists(st.text(), max_size=2)
long_text = st.integers(min_value=1025, max_value=1100).map(lambda n: "x" * n)
OPTIONAL = st.sampled_from(["reference", "reply_requested", "attachments"])
utc_offsets = st.integers(min_value=-1439, max_value=1439).map(
    lambda m: timezone(timedelta(minutes=m))
)

Edit = Callable[[dict[str, Any]], None]


def _field(name: str) -> tuple[str, ...]:
    """``"author.role"`` -> the path of that field of ``data`` in the event."""
    return ("data", *name.split("."))


def _set(path: tuple[str, ...], value: Any) -> Edit:
    *parents, key = path

    def edit(event: dict[str, Any]) -> None:
        for parent in parents:
            event = event[parent]
        event[key] = value

    return edit


def _delete(path: tuple[str, ...]) -> Edit:
    *parents, key = path

    def edit(event: dict[str, Any]) -> None:
        for parent in parents:
            event = event[parent]
        del event[key]

    return edit


def _set_field(name_and_value: tuple[str, Any]) -> Edit:
    name, value = name_and_value
    return _set(_field(name), value)


def _random_case(text: str) -> str:
    rng = random.Random(text)
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


# Each: (label, strategy of edits to the event, the outcomes allowed).
MUTATIONS: list[tuple[str, st.SearchStrategy[Edit], set[str]]] = [
    (
        "required field missing",
        st.sampled_from([*REQUIRED, "author.role"]).map(lambda name: _delete(_field(name))),
        {INVALID},
    ),
    (
        "string field of another type",
        st.tuples(st.sampled_from([*STRING_FIELDS, "author.role"]), not_a_string).map(_set_field),
        {INVALID},
    ),
    (
        "text empty or too long",
        st.tuples(st.sampled_from(["subject", "message"]), st.just("") | long_text).map(_set_field),
        {INVALID},
    ),
    (
        "seller id off the pattern",
        st.text(max_size=60)
        .filter(lambda s: SELLER_ID.fullmatch(s) is None)
        .map(lambda s: _set_field(("seller_id", s))),
        {INVALID},
    ),
    (
        "ticket id empty or too long",
        st.sampled_from(["", "t" * 257]).map(lambda s: _set_field(("ticket_id", s))),
        {INVALID},
    ),
    (
        "topic not in the enum",
        st.text(max_size=20)
        .filter(lambda s: not (s.isascii() and s.lower() in TOPICS))
        .map(lambda s: _set_field(("topic", s))),
        {INVALID},
    ),
    (
        "role not in the enum",
        st.text(max_size=20)
        .filter(lambda s: not (s.isascii() and s.lower() in ROLES))
        .map(lambda s: _set_field(("author.role", s))),
        {INVALID},
    ),
    (
        "created_at without an offset",
        st.datetimes().map(lambda d: _set_field(("created_at", d.isoformat()))),
        {INVALID},
    ),
    (
        "author name too long",
        st.integers(101, 200).map(lambda n: _set_field(("author.name", "n" * n))),
        {INVALID},
    ),
    (
        "eleven attachments",
        st.just(
            _set_field(("attachments", [{"filename": "a.png", "content_type": "image/png"}] * 11))
        ),
        {INVALID},
    ),
    ("data not an object", not_a_string.map(lambda v: _set(("data",), v)), {INVALID}),
    (
        "unknown field added",
        st.tuples(st.text(min_size=1, max_size=12), json_values).map(
            lambda kv: _set(("data", f"x_{kv[0]}"), kv[1])
        ),
        {FORWARDED},
    ),
    (
        "enum in another case",
        st.sampled_from(TOPICS).map(lambda t: _set_field(("topic", _random_case(t)))),
        {FORWARDED},
    ),
    (
        "any text within the limits",
        st.tuples(st.sampled_from(["subject", "message"]), st.text(min_size=1, max_size=1024)).map(
            _set_field
        ),
        {FORWARDED},
    ),
    (
        "any author name",
        st.text(max_size=100).map(lambda s: _set_field(("author.name", s))),
        {FORWARDED},
    ),
    (
        "created_at with any offset",
        st.datetimes(timezones=utc_offsets).map(
            lambda d: _set_field(("created_at", d.isoformat()))
        ),
        {FORWARDED},
    ),
    (
        "optional field null or set",
        st.sampled_from(
            [
                ("reference", None),
                ("attachments", None),
                ("attachments", []),
                ("author.name", None),
                ("reply_requested", False),
            ]
        ).map(_set_field),
        {FORWARDED},
    ),
    (
        "any value anywhere",
        st.tuples(
            st.sampled_from(
                ["seller_id", "topic", "created_at", "author", "author.name", "subject"]
            ),
            json_values,
        ).map(_set_field),
        {FORWARDED, INVALID},
    ),
    (
        "any optional value",
        st.tuples(
            st.sampled_from(["reference", "reply_requested", "attachments"]), json_values
        ).map(_set_field),
        {FORWARDED, INVALID},
    ),
]


@st.composite
def near_valid(draw: st.DrawFn) -> Case:
    label, edits, allowed = draw(st.sampled_from(MUTATIONS))
    edit = draw(edits)
    n = next(_ids)
    event = valid_event(n, random.Random(n))
    event["data"]["ticket_id"] = ticket_id = f"H-{n:06d}"
    event["data"]["reference"] = {"type": "order_id", "id": f"O-{n}"}
    edit(event)
    return Case(label, orjson.dumps(event), frozenset(allowed), ticket_id)


class Batch:
    """One example's bodies; its repr stays short (the failing case is named in the assert).

    Not a dataclass: Hypothesis pretty-prints those field by field, 30 kB per batch.
    """

    def __init__(self, cases: list[Case]) -> None:
        self.cases = cases

    def __repr__(self) -> str:
        return f"Batch({len(self.cases)} bodies: {Counter(c.label for c in self.cases)})"


batches = st.lists(
    st.one_of(random_bytes, random_json, near_valid(), near_valid()),
    min_size=BATCH[0],
    max_size=BATCH[1],
).map(Batch)


# --- the property ------------------------------------------------------------------------------


@dataclass
class Tally:
    published: int = 0
    examples: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)


async def _run_batch(
    cases: list[Case],
    *,
    names: Names,
    emulator: Emulator,
    dead: DeadLetters,
    fleet: Fleet,
    tally: Tally,
) -> None:
    ids = [f"prop-{next(_ids)}" for _ in cases]
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.exchange)
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(case.body, message_id=message_id),
                    routing_key=names.binding_key,
                    mandatory=True,
                )
                for case, message_id in zip(cases, ids, strict=True)
            )
        )
    tally.published += len(cases)
    tally.examples += 1
    tally.labels.update(case.label for case in cases)
    counts = emulator.state.accepted_counts

    def outcomes() -> list[list[str]]:
        kinds = dead.kinds_by_message_id()
        return [
            [FORWARDED] * counts.get(case.ticket_id or "", 0) + kinds.get(message_id, [])
            for case, message_id in zip(cases, ids, strict=True)
        ]

    deadline = time.monotonic() + 60
    while not all(outcomes()):
        assert fleet.alive(), f"the worker died:\n{fleet.tail()}"
        assert time.monotonic() < deadline, "some messages have no outcome after 60 s"
        await asyncio.sleep(0.05)
        await dead.drain(every=0.1)
    for case, seen in zip(cases, outcomes(), strict=True):
        assert len(seen) == 1, f"{case.label}: {case.body[:200]!r} ended {seen}"
        assert seen[0] in case.allowed, f"{case.label}: {case.body[:200]!r} ended {seen[0]}"
        tally.outcomes[seen[0]] += 1
    assert fleet.alive(), f"the worker died:\n{fleet.tail()}"


@pytest.mark.timeout(600)
async def test_arbitrary_bodies_never_crash_the_worker(
    broker: Names, emulator: Emulator, dead: DeadLetters, make_fleet: MakeFleet, record: Record
) -> None:
    """Property-based bodies (random bytes, random JSON, near-valid events), one worker."""
    fleet = make_fleet()
    worker = await fleet.start()  # declares the exchange and queues the batches go to
    loop = asyncio.get_running_loop()
    tally = Tally()
    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a shrink would take hours
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(batches)
    def property_holds(batch: Batch) -> None:
        run = _run_batch(
            batch.cases, names=broker, emulator=emulator, dead=dead, fleet=fleet, tally=tally
        )
        asyncio.run_coroutine_threadsafe(run, loop).result(timeout=120)

    try:
        await asyncio.to_thread(property_holds)
    finally:
        duration = time.monotonic() - started
        record.figures.update(
            published=tally.published,
            examples=tally.examples,
            forwarded=tally.outcomes[FORWARDED],
            dead_lettered=tally.outcomes[MALFORMED] + tally.outcomes[INVALID],
            malformed=tally.outcomes[MALFORMED],
            invalid=tally.outcomes[INVALID],
            duration_s=round(duration, 1),
            goodput_per_s=round(tally.outcomes[FORWARDED] / duration, 1),
            ticket_calls=emulator.state.ticket_calls,
            by_generator=dict(tally.labels),
        )
    unexpected = fleet.count("ticket.failed_unexpectedly")
    left = await leftovers(broker)
    # Every message was checked to have exactly one outcome: none lost, none twice.
    record.figures.update(
        lost=0, duplicated=0, unexpected_errors=unexpected, leftovers=sum(left.values())
    )
    record.bounds = {
        "outcome": "exactly one per message, of the kinds its generator allows",
        "worker": "alive throughout, no ticket.failed_unexpectedly",
    }
    assert worker.process.returncode is None, fleet.tail()
    assert unexpected == 0, f"{unexpected} messages failed unexpectedly:\n{fleet.tail()}"
    assert not any(left.values()), left
    assert emulator.state.statuses.keys() <= {201}, "nothing invalid reached the API"
    assert tally.published >= EXAMPLES * BATCH[0]
