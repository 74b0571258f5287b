"""``scx-forwarder events`` as operators run it: a real process, the real broker, the emulator.

Each test binds its own queues to its own exchange, injects seller events into the emulator
and reads what the bridge published, in order, off those queues; the emulator's ledger says
what was acknowledged.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import jsonschema
import orjson
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.bridge import (
    Tap,
    bridge_env,
    check_published,
    make_backlog,
    start_bridge,
    unrouted_queue,
)
from tests.support.broker import Names
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn
from tests.support.proxy import TcpProxy
from worker.emulator import Emulator
from worker.emulator.events import seller_event, ticket_reply


def check_files_first(tap: Tap) -> None:
    """Every reply's files arrived before the reply itself, and match its attachment list."""
    seen: set[str] = set()
    for message in tap.messages:
        if message.routing_key == "ticket.replied.attachment":
            seen.add(str(message.message_id))
        elif message.routing_key == "ticket.replied":
            reply = orjson.loads(message.body)
            for attachment in reply["data"]["attachments"]:
                assert f"{reply['id']}/{attachment['filename']}" in seen
                assert "unavailable" not in attachment


def contract(instance: object, schema: str) -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "schemas" / schema
    jsonschema.validate(
        instance, orjson.loads(path.read_bytes()), format_checker=jsonschema.FormatChecker()
    )


def acked_once(emulator: Emulator, ids: set[str]) -> bool:
    counts = emulator.events.ledger.acked_counts
    return all(counts[i] >= 1 for i in ids)


# --- the tests ---------------------------------------------------------------------------------


async def test_every_event_is_published_once_files_first_and_acknowledged_once(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("all", "#")
    backlog = make_backlog(60)
    emulator.add_events(backlog.items, backlog.files)
    bridge = await start_bridge(bridge_env(names, emulator, EVENTS_BATCH_SIZE="25"), processes)

    await wait_for(
        lambda: acked_once(emulator, backlog.event_ids), timeout=60, what="every event acked"
    )
    await tap.until(len(backlog.expected))
    check_published(tap, backlog, exactly_once=True)
    check_files_first(tap)
    ledger = emulator.events.ledger
    assert set(ledger.acked_counts.values()) == {1}
    assert ledger.acked_again == 0
    assert ledger.unknown_acks == 0
    # Acknowledged in batches: 60 events in pages of 25 are 3 calls, never one per event.
    assert ledger.ack_calls == 3
    assert emulator.events.pending == 0

    bridge.process.send_signal(signal.SIGTERM)
    assert await bridge.wait() == 0
    assert bridge.has_event("worker.stopped")


async def test_the_reply_arrives_exactly_as_the_contract_says(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("replies", "ticket.replied", "ticket.replied.attachment")
    photo = bytes(range(256)) * 100
    emulator.add_events(
        [
            ticket_reply(
                "5cde84164d811d00144581f8",
                seller_id="4711",
                ticket_id="CASE-01071982",
                message="The door is open now.",
                created_at="2026-11-30T10:00:00+01:00",
                role="SELLER",
                name="HAL",
                reply_requested=False,
                attachments=[("door.png", "image/png"), ("missing.pdf", "application/pdf")],
            )
        ],
        [
            {
                "sellerId": "4711",
                "ticketId": "CASE-01071982",
                "filename": "door.png",
                "contentType": "image/png",
                "data": photo,
            }
        ],
    )
    await start_bridge(bridge_env(names, emulator), processes)
    await tap.until(2)
    attachment, reply = tap.messages
    sha = hashlib.sha256(photo).hexdigest()
    assert attachment.routing_key == "ticket.replied.attachment"
    assert attachment.body == photo
    assert attachment.content_type == "image/png"
    assert attachment.message_id == "5cde84164d811d00144581f8/door.png"
    assert attachment.headers == {
        "seller_id": "4711",
        "ticket_id": "CASE-01071982",
        "filename": "door.png",
        "sha256": sha,
        "x-scx-event-id": "5cde84164d811d00144581f8",
        "x-scx-event-type": "Seller:Ticket.Reply",
    }
    assert reply.message_id == "5cde84164d811d00144581f8"
    assert reply.headers == {
        "x-scx-event-id": "5cde84164d811d00144581f8",
        "x-scx-event-type": "Seller:Ticket.Reply",
    }
    assert orjson.loads(reply.body) == {
        "id": "5cde84164d811d00144581f8",
        "type": "ticket.replied",
        "time": "2026-11-30T10:00:00+01:00",
        "source": "scx",
        "data": {
            "seller_id": "4711",
            "ticket_id": "CASE-01071982",
            "created_at": "2026-11-30T10:00:00+01:00",
            "author": {"role": "seller", "name": "HAL"},
            "message": "The door is open now.",
            "reply_requested": False,
            "attachments": [
                {"filename": "door.png", "content_type": "image/png", "size": 25600, "sha256": sha},
                {
                    "filename": "missing.pdf",
                    "content_type": "application/pdf",
                    "unavailable": {"status": 404},
                },
            ],
        },
    }
    await wait_for(lambda: emulator.events.pending == 0, what="the reply acknowledged")
    # ... and it is what the published contract (docs/schemas, docs/asyncapi.yaml) says.
    contract(orjson.loads(reply.body), "ticket-replied.schema.json")
    contract(attachment.headers, "ticket-replied-attachment.headers.schema.json")


async def test_unroutable_and_malformed_events_are_kept_and_acknowledged(
    emulator: Emulator,
    names: Names,
    taps: Any,
    amqp: AbstractRobustConnection,
    processes: list[Process],
) -> None:
    replies = await taps("replies", "ticket.replied")  # nobody takes the files or orders
    emulator.add_events(
        [
            ticket_reply(
                "r-1",
                seller_id="s1",
                ticket_id="T-1",
                message="hi",
                attachments=[("a.txt", "text/plain")],
            ),
            seller_event("o-1", "Seller:Order.Shipping", {"orderId": "1"}),
            {
                "id": "m-1",
                "type": "Seller:Offer.New",
                "createdAt": "2026-11-30T10:00:00Z",
                "event": "{no",
            },
            {"id": "m-2", "createdAt": "2026-11-30T10:00:00Z", "event": {}},
            ticket_reply("m-3", seller_id="not valid!", ticket_id="T-3", message="x"),
            {"type": "System:Test", "createdAt": "2026-11-30T10:00:00Z", "event": {}},
        ],
        [
            {
                "sellerId": "s1",
                "ticketId": "T-1",
                "filename": "a.txt",
                "contentType": "text/plain",
                "data": b"hello",
            }
        ],
    )
    bridge = await start_bridge(bridge_env(names, emulator), processes)
    with_ids = {"r-1", "o-1", "m-1", "m-2", "m-3"}
    await wait_for(lambda: acked_once(emulator, with_ids), what="every event with an id acked")
    await replies.until(1)
    assert [m.message_id for m in replies.messages] == ["r-1"]

    unrouted = Tap(await amqp.channel(), unrouted_queue(names))
    await unrouted.until(5)
    kept = {str(m.message_id): m for m in unrouted.messages}
    assert set(kept) == {"r-1/a.txt", "o-1", "m-1", "m-2", "m-3"}
    file_copy = kept["r-1/a.txt"]
    assert file_copy.body == b"hello"
    assert file_copy.headers is not None
    assert file_copy.headers["x-original-routing-key"] == "ticket.replied.attachment"
    assert file_copy.headers["x-original-exchange"] == names.exchange
    assert file_copy.headers["x-error-kind"] == "unroutable"
    order = kept["o-1"].headers or {}
    assert order["x-original-routing-key"] == "scx.seller.order.shipping"
    assert orjson.loads(kept["o-1"].body)["data"] == {"orderId": "1"}
    for message_id, kind in (("m-1", "malformed"), ("m-2", "malformed"), ("m-3", "invalid")):
        headers = kept[message_id].headers or {}
        assert headers["x-error-kind"] == kind, message_id
        assert orjson.loads(str(headers["x-error-detail"]))
        assert orjson.loads(kept[message_id].body)["id"] == message_id  # the raw item
    for message in kept.values():
        contract(message.headers, "events-unrouted.headers.schema.json")
    detail = orjson.loads(str((kept["m-3"].headers or {})["x-error-detail"]))
    assert detail["errors"][0]["loc"] == "sellerId"

    # The item without an id is never acknowledged; it is logged and counted.
    ledger = emulator.events.ledger
    assert ledger.acked_total == 5
    assert ledger.unknown_acks == 0
    assert emulator.events.pending == 1
    assert bridge.has_event("events.without_id")


async def test_a_refused_message_leaves_its_event_unacknowledged(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    full = await taps(
        "full",
        "scx.seller.order.refund",
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    others = await taps("others", "scx.seller.order.shipping")
    await full.channel.default_exchange.publish(aio_pika.Message(b"filler"), full.name)
    emulator.configure(event_visibility=0.5)
    emulator.add_events(
        [
            seller_event("refund-1", "Seller:Order.Refund", {"amount": 5}),
            seller_event("ship-1", "Seller:Order.Shipping", {}),
        ]
    )
    # Room comes after 3 deliveries, before the last resort (tests/test_event_delivery_cap.py).
    env = bridge_env(names, emulator, EVENTS_DELIVERY_TRIES="8")
    bridge = await start_bridge(env, processes)
    counts = emulator.events.ledger.handed_counts
    await wait_for(lambda: counts["refund-1"] >= 3, what="the refund polled three times")
    ledger = emulator.events.ledger
    assert ledger.acked_counts["refund-1"] == 0, "acknowledged although the broker refused it"
    assert ledger.acked_counts["ship-1"] == 1
    assert bridge.has_event("events.refused")
    await others.until(1)

    # Room in the queue: the next delivery is held by the broker and acknowledged.
    await full.take()
    assert [m.body for m in full.messages] == [b"filler"]
    await wait_for(lambda: ledger.acked_counts["refund-1"] == 1, what="the refund acknowledged")
    await full.until(1 + 1, quiet=0.5)
    assert full.messages[-1].message_id == "refund-1"


async def test_sigterm_finishes_the_batch_in_hand_and_exits_0(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("all", "#")
    backlog = make_backlog(12, seed=5)
    emulator.add_events(backlog.items, backlog.files)
    emulator.configure(latency=0.15)
    bridge = await start_bridge(bridge_env(names, emulator), processes)
    state = emulator.state
    await wait_for(lambda: state.channel_calls["download"] >= 1, what="a download under way")
    assert emulator.events.ledger.acked_total == 0

    signalled = time.monotonic()
    bridge.process.send_signal(signal.SIGTERM)
    assert await bridge.wait(timeout=30) == 0
    assert time.monotonic() - signalled < 10  # WORKER_SHUTDOWN_GRACE
    # The whole batch was published and acknowledged before the exit; nothing was left.
    assert emulator.events.ledger.acked_total == len(backlog.items)
    await tap.until(len(backlog.expected), quiet=0.3)
    check_published(tap, backlog, exactly_once=True)
    assert not bridge.has_event("events.grace_over")


async def test_api_outage_and_429s_back_off_and_lose_no_acknowledgement(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("all", "#")
    backlog = make_backlog(40, seed=9)
    emulator.add_events(backlog.items, backlog.files)
    emulator.configure(latency=0.1, rate_limit=6, rate_interval=1, event_visibility=6)
    env = bridge_env(
        names,
        emulator,
        EVENTS_BATCH_SIZE="10",
        SCX_BREAKER_COOLDOWN="0.5",
        SCX_BREAKER_MAX_COOLDOWN="2",
    )
    bridge = await start_bridge(env, processes)
    ledger = emulator.events.ledger
    await wait_for(lambda: ledger.handed_out >= 10, what="a first page")
    first_page = [item["id"] for item in backlog.items[:10]]
    # The next events call is that page's acknowledgement: it fails more often than the
    # retry attempts allow, so it has to wait for the next round.
    emulator.inject("events", 503, count=6)
    await wait_for(lambda: bridge.has_event("events.ack_failed"), what="an ack that failed")
    await wait_for(lambda: acked_once(emulator, set(first_page)), what="the first page acked")
    # Kept and sent again, not lost: none of them had to come back from SCX.
    assert [ledger.handed_counts[i] for i in first_page] == [1] * 10

    emulator.configure(outage=True)
    await asyncio.sleep(2)  # sync-ok: the fault itself, the API is down this long
    emulator.configure(outage=False)
    try:
        await wait_for(
            lambda: acked_once(emulator, backlog.event_ids), timeout=90, what="every event acked"
        )
    finally:
        print(bridge.output[-8000:])
    await tap.until(len(backlog.expected))
    # An event whose file could not be fetched during the outage came again after its
    # visibility timeout; anything published twice is the same message, byte for byte.
    check_published(tap, backlog, exactly_once=False)
    assert (
        emulator.state.route_statuses["events 429"] + emulator.state.route_statuses["download 429"]
        > 0
    )
    assert emulator.state.route_statuses["events 503"] > 0


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    tcp = TcpProxy()
    await tcp.start()
    yield tcp
    await tcp.close()


def polled(process: Process) -> int:
    return sum(1 for line in process.lines if b'"event":"events.polled"' in line)


async def test_two_replicas_one_polls_and_the_standby_takes_over_after_kill_9(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("all", "#")
    env = bridge_env(names, emulator)
    first = await start_bridge(env, processes)
    second = await spawn("events", env=env)
    processes.append(second)
    await wait_for(lambda: second.has_event("events.standby"), what="the second to stand by")
    ledger = emulator.events.ledger
    for round_ in range(3):  # events in several polls: only the first replica takes them
        emulator.add_events([seller_event(f"a-{round_}-{n}", "System:Test", {}) for n in range(5)])
        await wait_for(lambda: emulator.events.pending == 0, what="the round acknowledged")
    assert polled(first) >= 1
    # (Should the shared broker drop both connections meanwhile, either may win the lock.)
    assert not first.has_event("events.connection_lost"), first.output[-3000:]
    assert polled(second) == 0, second.output[-3000:]
    assert not second.has_event("events.poller_active")

    first.process.kill()
    killed = time.monotonic()
    assert await first.wait() == -signal.SIGKILL
    emulator.add_events([seller_event("b-1", "System:Test", {})])
    await wait_for(lambda: ledger.acked_counts["b-1"] == 1, timeout=20, what="the standby to poll")
    took = time.monotonic() - killed
    print(f"standby took over after {took:.1f} s")
    assert took <= 15, f"the standby took {took:.1f} s"
    assert second.has_event("events.poller_active")
    await tap.until(16, quiet=0.5)


async def test_a_standby_takes_over_from_a_replica_that_lost_its_connection(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process], proxy: TcpProxy
) -> None:
    """A silent partition (nothing flows, no socket closes): found by heartbeats."""
    env = bridge_env(names, emulator)
    cut_off = await start_bridge(env | {"AMQP_URL": proxy.url}, processes)
    standby = await spawn("events", env=env)
    processes.append(standby)
    await wait_for(lambda: standby.has_event("events.standby"), what="the standby")

    proxy.freeze()
    frozen = time.monotonic()
    await wait_for(
        lambda: standby.has_event("events.poller_active"),
        timeout=20,
        what="the standby to take the lock",
    )
    took = time.monotonic() - frozen
    print(f"standby took over after {took:.1f} s")
    assert took <= 15, f"the standby took {took:.1f} s"
    emulator.add_events([seller_event("c-1", "System:Test", {})])
    await wait_for(lambda: emulator.events.ledger.acked_counts["c-1"] == 1, what="c-1 acked")
    assert polled(standby) >= 1
    # The cut-off replica notices by its own heartbeats and stands by once it is back.
    await proxy.restore()
    await wait_for(
        lambda: cut_off.has_event("events.connection_lost"), timeout=30, what="the loss noticed"
    )
    await wait_for(lambda: cut_off.has_event("events.standby"), timeout=30, what="a standby")


async def test_broker_gone_for_10_s_nothing_acknowledged_meanwhile_all_published_after(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process], proxy: TcpProxy
) -> None:
    tap = await taps("all", "#")
    backlog = make_backlog(150, seed=21)
    emulator.add_events(backlog.items, backlog.files)
    emulator.configure(latency=0.02)
    env = bridge_env(names, emulator, AMQP_URL=proxy.url, EVENTS_BATCH_SIZE="10")
    bridge = await start_bridge(env, processes)
    ledger = emulator.events.ledger
    await wait_for(lambda: ledger.acked_total >= 30, what="a fifth acknowledged")

    await proxy.cut()
    await asyncio.sleep(0.5)  # an acknowledgement already on its way may still land
    acked, calls = ledger.acked_total, ledger.ack_calls
    await asyncio.sleep(10)  # sync-ok: the fault itself, the broker is gone this long
    assert (ledger.acked_total, ledger.ack_calls) == (acked, calls), "acknowledged meanwhile"
    assert acked < len(backlog.items)
    await proxy.restore()

    try:
        await wait_for(
            lambda: acked_once(emulator, backlog.event_ids), timeout=60, what="every event acked"
        )
    except BaseException:
        print(bridge.output[-6000:])
        raise
    await tap.until(len(backlog.expected))
    check_published(tap, backlog, exactly_once=False)
    assert bridge.has_event("events.connection_lost")
    assert bridge.process.returncode is None


async def test_probes_and_metrics_of_the_bridge(
    emulator: Emulator,
    names: Names,
    taps: Any,
    processes: list[Process],
    unused_tcp_port: int,
) -> None:
    await taps("all", "#")
    emulator.add_events(
        [
            seller_event("p-1", "Seller:Order.Shipping", {}, created_at="2026-11-30T00:00:00Z"),
            {"type": "System:Test"},
        ]
    )
    env = bridge_env(names, emulator, METRICS_PORT=str(unused_tcp_port), METRICS_HOST="127.0.0.1")
    await start_bridge(env, processes)
    await wait_for(lambda: emulator.events.pending == 1, what="p-1 acknowledged")
    base = f"http://127.0.0.1:{unused_tcp_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert (await http.get("/healthz")).status_code == 200
        text = (await http.get("/metrics")).text
    shipping = 'type="Seller:Order.Shipping"'
    lock = f'lock="{names.queue}.lock"'
    for line in (
        f"scx_forwarder_events_polled_total{{{shipping}}} 1.0",
        f"scx_forwarder_events_published_total{{{shipping}}} 1.0",
        f"scx_forwarder_events_acknowledged_total{{{shipping}}} 1.0",
        'scx_forwarder_events_polled_total{type="System:Test"} 1.0',
        "scx_forwarder_events_without_id_total 1.0",
        f"scx_forwarder_events_poller_active{{{lock}}} 1.0",
        f"scx_forwarder_events_publish_delay_seconds_count{{{shipping}}} 1.0",
    ):
        assert line in text, line
    last_poll = next(
        line
        for line in text.splitlines()
        if line.startswith("scx_forwarder_events_last_poll_success_timestamp_seconds{")
    )
    assert float(last_poll.split()[-1]) > time.time() - 60


async def test_exit_codes_as_run(
    emulator: Emulator,
    names: Names,
    taps: Any,  # deletes the exchange and unrouted queue the refused one declared
    processes: list[Process],
    unused_tcp_port: int,
) -> None:
    unreachable = await spawn(
        "events",
        env=bridge_env(
            names, emulator, AMQP_URL=f"amqp://guest:guest@127.0.0.1:{unused_tcp_port}/"
        ),
    )
    processes.append(unreachable)
    assert await unreachable.wait() == 1
    assert unreachable.has_event("worker.broker_unreachable")

    refused = await spawn("events", env=bridge_env(names, emulator, SCX_REFRESH_TOKEN="wrong"))
    processes.append(refused)
    assert await refused.wait() == 3
    assert refused.has_event("worker.fatal")
    assert "wrong" not in refused.output

    bad = await spawn("events", env=bridge_env(names, emulator, EVENTS_BATCH_SIZE="0"))
    processes.append(bad)
    assert await bad.wait() == 2
    assert "EVENTS_BATCH_SIZE" in bad.output


async def test_with_tracing_on_every_message_carries_the_poll_s_trace(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("all", "#")
    emulator.add_events([seller_event(f"t-{n}", "System:Test", {}) for n in range(3)])
    env = bridge_env(names, emulator, OTEL_TRACES_EXPORTER="console")
    await start_bridge(env, processes)
    await tap.until(3, quiet=0.3)
    traces = set()
    for message in tap.messages:
        traceparent = str((message.headers or {})["traceparent"])
        traces.add(traceparent.split("-")[1])
    assert len(traces) == 1, "one poll, one trace"


async def test_an_unrouted_queue_declared_otherwise_stops_it_with_exit_1(
    emulator: Emulator,
    names: Names,
    taps: Any,
    amqp: AbstractRobustConnection,
    processes: list[Process],
) -> None:
    channel = await amqp.channel()
    await channel.declare_queue(unrouted_queue(names), durable=True)  # classic, not quorum
    await channel.close()
    bridge = await spawn("events", env=bridge_env(names, emulator))
    processes.append(bridge)
    assert await bridge.wait() == 1
    assert bridge.has_event("worker.topology_mismatch")


async def test_files_up_to_16_mib_are_published_larger_ones_marked_unavailable(
    emulator: Emulator, names: Names, taps: Any, processes: list[Process]
) -> None:
    tap = await taps("replies", "ticket.replied", "ticket.replied.attachment")
    limit = 16 * 1024 * 1024
    big, too_big = random.randbytes(limit), b"x" * (limit + 1)
    files = [("big.bin", big), ("too-big.bin", too_big)]
    emulator.add_events(
        [
            ticket_reply(
                "big-1",
                seller_id="s1",
                ticket_id="T-big",
                message="two large files",
                attachments=[(name, "application/octet-stream") for name, _ in files],
            )
        ],
        [
            {
                "sellerId": "s1",
                "ticketId": "T-big",
                "filename": name,
                "contentType": "application/octet-stream",
                "data": data,
            }
            for name, data in files
        ],
    )
    await start_bridge(bridge_env(names, emulator), processes)
    await tap.until(2, timeout=60, quiet=0.5)
    attachment, reply = tap.messages
    assert attachment.message_id == "big-1/big.bin"
    assert attachment.body == big
    listed = orjson.loads(reply.body)["data"]["attachments"]
    assert listed[0]["size"] == limit
    assert listed[1] == {
        "filename": "too-big.bin",
        "content_type": "application/octet-stream",
        "unavailable": {"status": 413, "reason": "too_large", "max_bytes": limit},
    }
    await wait_for(lambda: emulator.events.pending == 0, what="the reply acknowledged")
