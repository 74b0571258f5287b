"""What every reliability scenario shares: a backlog, a fleet of workers, the reconciliation.

A scenario publishes a backlog through the worker's own topology (``worker.ops.publish``), runs
one to three ``scx-forwarder run`` processes against the in-process emulator, injects its
fault, waits until every event has an outcome, and then reconciles the books:

- every valid event must have been accepted by the emulator (its ticket id in the ledger,
  the count above 1 being duplicates), never dead-lettered;
- every invalid event must be in the dead-letter queue exactly once with the right
  ``x-error-kind`` (``malformed`` or ``invalid``), never accepted;
- nothing may be left in the work queue or its delay queues (``<queue>.retry.<N>s``).

Figures go to the scenario's record (``tests/reliability/conftest.py``), which lands in the
results file when ``RELIABILITY_REPORT`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import aio_pika
import aiormq
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.broker import Names, rabbitmqctl
from tests.support.endpoints import AMQP_URL
from tests.support.processes import Process, spawn, worker_env
from worker.amqp.broker import connect, connect_robust
from worker.core.settings import Settings, load_settings
from worker.emulator import Emulator
from worker.ops.publish import publish_lines
from worker.ops.samples import valid_event

# The circuit breaker and delay-queue settings scale the production defaults (5 s cool-down,
# delays of 10 s, 1 min, 10 min) down to test time.
FAST_RETRIES = {
    "WORKER_RETRY_DELAYS": "1,2,4",
    "SCX_BREAKER_COOLDOWN": "1",
    "SCX_RETRY_INITIAL_WAIT": "0.05",
    "SCX_RETRY_MAX_WAIT": "1",
    "WORKER_SHUTDOWN_GRACE": "10",
}


@dataclass(frozen=True)
class Endpoint:
    """Where the scenario's broker is: ``AMQP_URL`` (one or several nodes) and the node
    ``rabbitmqctl`` asks (None: the machine's own broker)."""

    url: str = AMQP_URL
    node: str | None = None

    def settings(self) -> Settings:
        return Settings(amqp_url=self.url)

    async def ctl(self, *args: str) -> str:
        return await rabbitmqctl(*(("-n", self.node) if self.node else ()), *args)


LOCAL = Endpoint()


# --- the backlog ----------------------------------------------------------------------------


@dataclass
class Backlog:
    """Bodies in publishing order, and what must become of each."""

    bodies: list[bytes]
    valid: set[str]  # ticket ids that must be accepted
    invalid: dict[bytes, str]  # body -> the x-error-kind it must be dead-lettered with

    @property
    def size(self) -> int:
        return len(self.bodies)


def _invalid_body(k: int, rng: random.Random) -> tuple[str, bytes]:
    """The k-th bad body: a class of its own per k modulo 8, unique by its k."""
    event = valid_event(100_000 + k, rng)
    event["id"] = f"evt-bad-{k}"
    data = event["data"]
    data["ticket_id"] = f"BAD-{k:05d}"
    match k % 8:
        case 0:
            return "malformed", b"\xff\xfe not utf-8 #%d" % k
        case 1:
            return "malformed", b"{this is not json #%d" % k
        case 2:
            return "malformed", b"[%d, 2, 3]" % k
        case 3:
            return "invalid", orjson.dumps({"id": f"evt-no-data-{k}", "type": "ticket.created"})
        case 4:
            data["created_at"] = "2026-11-27T10:00:00"  # no offset: ambiguous
        case 5:
            data["topic"] = "complaint"
        case 6:
            data["author"] = {"role": "buyer", "name": "x" * 101}
        case _:
            return "invalid", orjson.dumps(
                {"sellerId": "s_1", "ticketId": f"BAD-{k:05d}", "topic": "QUESTION"}
            )
    return "invalid", orjson.dumps(event)


def make_backlog(total: int, *, invalid_share: float = 0.02, seed: int = 1) -> Backlog:
    """``total`` events, ``invalid_share`` of them bad, shuffled (the same for the same seed)."""
    rng = random.Random(seed)
    n_invalid = round(total * invalid_share)
    valid_bodies = [orjson.dumps(valid_event(i, rng)) for i in range(total - n_invalid)]
    invalid = dict(_invalid_body(k, rng)[::-1] for k in range(n_invalid))
    bodies = valid_bodies + list(invalid)
    rng.shuffle(bodies)
    return Backlog(bodies, {f"T-{i:06d}" for i in range(total - n_invalid)}, invalid)


def settings_for(env: Mapping[str, str]) -> Settings:
    """The settings a worker started with ``env`` reads (so the publisher declares the same)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return load_settings()


async def publish_backlog(env: Mapping[str, str], backlog: Backlog) -> None:
    confirmed = await publish_lines(settings_for(env), backlog.bodies)
    assert confirmed == backlog.size


# --- the workers ----------------------------------------------------------------------------


class Fleet:
    """``scx-forwarder run`` processes sharing one environment; all killed at teardown."""

    def __init__(self, names: Names, emulator: Emulator, **env: str) -> None:
        self.env = worker_env(names, emulator, **env)
        self.processes: list[Process] = []

    async def start(self, **extra: str) -> Process:
        worker = await spawn("run", env=self.env | extra)
        self.processes.append(worker)
        exited = asyncio.create_task(worker.process.wait())
        deadline = time.monotonic() + 30
        while not worker.has_event("worker.consuming"):
            if exited.done() or time.monotonic() > deadline:
                exited.cancel()
                pytest.fail(f"worker did not start consuming:\n{worker.output[-3000:]}")
            await asyncio.sleep(0.05)
        exited.cancel()
        return worker

    def alive(self) -> list[Process]:
        return [p for p in self.processes if p.process.returncode is None]

    def count(self, event: str, **fields: Any) -> int:
        """Log lines of every worker with that event and those field values."""
        needle = b'"event":"' + event.encode() + b'"'
        total = 0
        for worker in self.processes:
            for line in worker.lines:
                if needle in line:
                    parsed = orjson.loads(line)
                    total += all(parsed.get(k) == v for k, v in fields.items())
        return total

    def about(self, ticket_ids: list[str], *, limit: int = 12) -> str:
        """The log lines of every worker that name one of ``ticket_ids``."""
        out = []
        for ticket_id in ticket_ids:
            needle = f'"{ticket_id}"'.encode()
            for i, worker in enumerate(self.processes):
                hits = [line for line in worker.lines if needle in line][:limit]
                out += [f"[worker {i}] {line.decode(errors='replace').rstrip()}" for line in hits]
        return "\n".join(out)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- worker {i} (exit {p.process.returncode}):\n"
            + b"".join(p.lines[-lines:]).decode(errors="replace")
            for i, p in enumerate(self.processes)
        )

    async def close(self) -> None:
        for worker in self.processes:
            if worker.process.returncode is None:
                worker.process.kill()
            with contextlib.suppress(TimeoutError):
                await worker.wait(timeout=10)


MakeFleet = Callable[..., Fleet]


# --- the dead-letter queue -----------------------------------------------------------------


@dataclass
class DeadCopy:
    body: bytes
    kind: str | None  # x-error-kind; None for a copy the broker dead-lettered by itself
    message_id: str | None


@dataclass
class DeadLetters:
    """Takes every copy off ``<queue>.dlq`` as it arrives; survives a broker restart."""

    queue: str
    endpoint: Endpoint = LOCAL
    copies: list[DeadCopy] = field(default_factory=list)
    _connection: AbstractRobustConnection | None = None
    _last: float = 0.0

    async def drain(self, *, every: float = 0.25) -> None:
        """Take what is there (at most once per ``every`` seconds); broker errors are skipped."""
        if time.monotonic() - self._last < every:
            return
        self._last = time.monotonic()
        try:
            if self._connection is None or self._connection.is_closed:
                self._connection = await connect_robust(self.endpoint.settings(), "dlq")
            channel = await self._connection.channel()
            try:
                queue = await channel.declare_queue(self.queue, passive=True)
                while (message := await queue.get(no_ack=False, fail=False)) is not None:
                    kind = (message.headers or {}).get("x-error-kind")
                    kind = kind if isinstance(kind, str) else None
                    self.copies.append(DeadCopy(message.body, kind, message.message_id))
                    await message.ack()
            finally:
                await channel.close()
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPError, OSError, RuntimeError):
            # The broker is restarting, the queue is not declared yet, or (a cluster) its
            # leader just went and the broker closed the connection (aio-pika's RuntimeError
            # "closed" until it reconnects): next time.
            return

    def bodies(self) -> set[bytes]:
        return {copy.body for copy in self.copies}

    def kinds_by_message_id(self) -> dict[str, list[str]]:
        kinds: dict[str, list[str]] = {}
        for copy in self.copies:
            kinds.setdefault(copy.message_id or "", []).append(copy.kind or "broker")
        return kinds

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


# --- waiting and reconciling -----------------------------------------------------------------


async def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    fleet: Fleet | None = None,
    what: str,
) -> None:
    """Poll ``condition``; fail after ``timeout`` or when every worker of ``fleet`` died."""
    deadline = time.monotonic() + timeout
    while not condition():
        if fleet is not None and fleet.processes and not fleet.alive():
            pytest.fail(f"every worker exited while waiting for {what}:\n{fleet.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def accepted_valid(emulator: Emulator, backlog: Backlog) -> int:
    counts = emulator.state.accepted_counts
    return sum(1 for ticket_id in backlog.valid if ticket_id in counts)


async def settle(
    backlog: Backlog,
    emulator: Emulator,
    dead: DeadLetters,
    *,
    timeout: float,
    fleet: Fleet | None = None,
) -> bool:
    """Wait until every event has an outcome; False on timeout (reconcile says what is missing)."""
    deadline = time.monotonic() + timeout
    counts = emulator.state.accepted_counts
    while True:
        await dead.drain()
        if len(counts) >= len(backlog.valid) and accepted_valid(emulator, backlog) == len(
            backlog.valid
        ):
            seen = dead.bodies()
            if all(body in seen for body in backlog.invalid):
                return True
        if time.monotonic() > deadline or (fleet is not None and not fleet.alive()):
            await dead.drain(every=0)
            return False
        await asyncio.sleep(0.05)


@dataclass
class Books:
    """The reconciliation: every figure and every discrepancy, by name."""

    published: int
    forwarded: int
    dead_lettered: int
    duplicated: int
    duplicate_ids: list[str]
    lost: list[str]
    valid_dead_lettered: list[str]
    wrong_kind: list[str]
    invalid_accepted: list[str]
    unknown: list[str]
    leftovers: dict[str, int]

    def figures(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "forwarded": self.forwarded,
            "lost": len(self.lost),
            "duplicated": self.duplicated,
            "dead_lettered": self.dead_lettered,
            "valid_dead_lettered": len(self.valid_dead_lettered),
            "leftovers": sum(self.leftovers.values()),
        }

    def check(self, *, max_duplicates: int, fleet: Fleet | None = None) -> None:
        """The invariants every scenario shares; duplicates bounded per scenario.

        With ``fleet``, a failure quotes the workers' log lines about the first duplicates.
        """
        problems = {
            "lost": self.lost,
            "valid events dead-lettered": self.valid_dead_lettered,
            "dead-lettered with the wrong kind": self.wrong_kind,
            "invalid events accepted by the API": self.invalid_accepted,
            "unknown tickets or copies": self.unknown,
        }
        found = {what: items[:10] for what, items in problems.items() if items}
        assert not found, f"{found} (counts: {self.figures()})"
        assert not any(self.leftovers.values()), f"left in queues: {self.leftovers}"
        if self.duplicated > max_duplicates:
            evidence = fleet.about(self.duplicate_ids[:3]) if fleet is not None else ""
            pytest.fail(
                f"{self.duplicated} duplicates, at most {max_duplicates} allowed; "
                f"sent more than once: {self.duplicate_ids[:20]}\n{evidence}"
            )


def _ticket_id(body: bytes) -> str | None:
    try:
        event = orjson.loads(body)
        return str(event["data"]["ticket_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


async def reconcile(backlog: Backlog, emulator: Emulator, dead: DeadLetters, names: Names) -> Books:
    await dead.drain(every=0)
    counts = emulator.state.accepted_counts
    by_body: dict[bytes, list[str | None]] = {}
    for copy in dead.copies:
        by_body.setdefault(copy.body, []).append(copy.kind)

    lost: list[str] = []
    valid_dead: list[str] = []
    wrong: list[str] = []
    duplicated = 0
    duplicate_ids = sorted(t for t in backlog.valid if counts[t] > 1)
    for ticket_id in backlog.valid:
        if counts[ticket_id] == 0:
            lost.append(ticket_id)
        duplicated += max(0, counts[ticket_id] - 1)
    for body, kinds in by_body.items():
        expected = backlog.invalid.get(body)
        if expected is None:
            dead_id = _ticket_id(body)
            target = valid_dead if dead_id in backlog.valid else wrong
            target.append(f"{dead_id or body[:60]!r} dead-lettered as {kinds}")
            continue
        duplicated += len(kinds) - 1
        if any(kind != expected for kind in kinds):
            wrong.append(f"{body[:60]!r}: {kinds}, expected {expected}")
    for body in backlog.invalid:
        if body not in by_body:
            lost.append(f"invalid {body[:60]!r}")
    invalid_ids = {tid for body in backlog.invalid if (tid := _ticket_id(body))}
    invalid_accepted = sorted(invalid_ids & counts.keys())
    unknown = sorted(counts.keys() - backlog.valid - invalid_ids)
    return Books(
        published=backlog.size,
        forwarded=sum(1 for ticket_id in backlog.valid if counts[ticket_id] > 0),
        dead_lettered=len(dead.copies),
        duplicated=duplicated,
        duplicate_ids=duplicate_ids,
        lost=sorted(lost),
        valid_dead_lettered=valid_dead,
        wrong_kind=wrong,
        invalid_accepted=invalid_accepted,
        unknown=unknown,
        leftovers=await leftovers(names, dead.endpoint),
    )


async def broker_queues(prefix: str, endpoint: Endpoint = LOCAL) -> list[str]:
    listing = await endpoint.ctl("list_queues", "--no-table-headers", "name")
    return sorted(q for q in listing.split() if q.startswith(prefix))


async def leftovers(names: Names, endpoint: Endpoint = LOCAL) -> dict[str, int]:
    """Messages ready in the work queue and each of its delay queues (taken and given back).

    Counted by taking them (a passive declare's count lags on quorum queues); closing the
    channel hands them back.
    """
    queues = [names.queue]
    queues += [q for q in await broker_queues(names.queue, endpoint) if ".retry." in q]
    connection = await connect(endpoint.settings(), "check")
    counts: dict[str, int] = {}
    async with connection:
        channel = await connection.channel()
        for name in queues:
            queue = await channel.declare_queue(name, passive=True)
            count = 0
            while await queue.get(no_ack=False, fail=False) is not None:
                count += 1
            counts[name] = count
    return counts


async def delete_broker_objects(names: Names, endpoint: Endpoint = LOCAL) -> None:
    """Delete the test's queues (work, DLQ, delay queues) and exchanges, whatever they are."""
    suffix = names.queue.rsplit(".", 1)[-1]
    queues = await broker_queues(names.queue, endpoint)
    exchanges = await endpoint.ctl("list_exchanges", "--no-table-headers", "name")
    connection = await connect(endpoint.settings(), "check")
    async with connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges.split():
            if suffix in exchange:
                await channel.exchange_delete(exchange)


def snapshot_statuses(emulator: Emulator) -> dict[int, int]:
    return dict(emulator.state.statuses)


def share(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def iter_events(lines: Iterable[bytes], event: str) -> Iterable[dict[str, Any]]:
    needle = b'"event":"' + event.encode() + b'"'
    for line in lines:
        if needle in line:
            yield orjson.loads(line)


async def finish(
    record_figures: dict[str, Any],
    backlog: Backlog,
    emulator: Emulator,
    dead: DeadLetters,
    names: Names,
    *,
    started: float,
    timeout: float,
    fleet: Fleet | None = None,
) -> Books:
    """Wait for every outcome, reconcile, and record the figures every scenario has."""
    settled = await settle(backlog, emulator, dead, timeout=timeout, fleet=fleet)
    duration = time.monotonic() - started
    books = await reconcile(backlog, emulator, dead, names)
    state = emulator.state
    record_figures.update(books.figures())
    record_figures.update(
        settled=settled,
        duration_s=round(duration, 1),
        goodput_per_s=round(books.forwarded / duration, 1),
        ticket_calls=state.ticket_calls,
        auth_calls=state.auth_calls,
        responses_429=state.statuses[429],
        share_429=share(state.statuses[429], state.ticket_calls),
    )
    return books


# --- the scenario's record ---------------------------------------------------------------------


@dataclass
class Record:
    """What one scenario reports: figures, and the bounds it asserted on them."""

    title: str
    figures: dict[str, Any] = field(default_factory=dict)
    bounds: dict[str, str] = field(default_factory=dict)
