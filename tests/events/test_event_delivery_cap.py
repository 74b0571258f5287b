"""SCX gives a seller event up after 10 deliveries: nothing the bridge can publish is lost to it.

The bridge runs in this process (its metrics and logs are read directly) against the real
broker and the emulator, which hides a polled event for ``event_visibility`` seconds and gives
it up after ``event_max_deliveries`` (10, as SCX). Each test has its own exchange and queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY
from pydantic import SecretStr
from structlog.testing import capture_logs

from tests.support.broker import Names
from tests.support.endpoints import REDIS_URL, REFRESH_TOKEN
from tests.support.polling import wait_for
from tests.support.settings import make_settings
from worker.core.settings import Settings
from worker.emulator import Emulator
from worker.emulator.events import example_event, seller_event, ticket_reply
from worker.events.bridge import Bridge
from worker.scx import ATTACHMENT_PATH, ScxClient

TRIES = 3


def bridge_settings(names: Names, emulator: Emulator, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "events_unrouted_queue": f"{names.queue}.unrouted",
        "events_lock_name": f"{names.queue}.lock",
        "events_poll_interval": 0.1,
        "events_delivery_tries": TRIES,
        "scx_retry_attempts": 2,
        "scx_retry_budget": 1.0,
        "scx_breaker_failures": 1000,
    }
    return make_settings(names, emulator, **(values | extra))


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Bridge]:
    async with ScxClient(settings, SecretStr(REFRESH_TOKEN), background=True) as client:
        bridge = Bridge(settings, client)
        task = asyncio.ensure_future(bridge.run())
        try:
            await wait_for(lambda: bridge.active or task.done(), what="the bridge to poll")
            yield bridge
        finally:
            bridge.stop()
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def chan(amqp: AbstractRobustConnection, names: Names) -> AsyncIterator[AbstractChannel]:
    channel = await amqp.channel()
    yield channel
    for suffix in ("replies", "unrouted", "full", "files"):
        await channel.queue_delete(f"{names.queue}.{suffix}")
    await channel.exchange_delete(names.exchange)
    await channel.close()


async def bound(channel: AbstractChannel, names: Names, suffix: str, key: str, **args: Any) -> Any:
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(f"{names.queue}.{suffix}", arguments=args or None)
    await queue.bind(exchange, key)
    return queue


async def take_all(queue: Any) -> list[AbstractIncomingMessage]:
    got = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        got.append(message)
    return got


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"scx_forwarder_{name}", labels) or 0.0


@pytest.mark.parametrize("record", ["process", "redis"])
async def test_a_reply_whose_file_keeps_failing_is_published_without_it_before_scx_gives_up(
    emulator: Emulator, names: Names, chan: AbstractChannel, redis_prefix: str, record: str
) -> None:
    replies = await bound(chan, names, "replies", "ticket.replied")
    files = await bound(chan, names, "files", "ticket.replied.attachment")
    emulator.configure(event_visibility=0.3)
    reply = ticket_reply(
        "reply-1",
        seller_id="4711",
        ticket_id="CASE-1",
        message="See the files.",
        attachments=[("ok.pdf", "application/pdf"), ("broken.pdf", "application/pdf")],
    )
    ok = {"sellerId": "4711", "ticketId": "CASE-1", "filename": "ok.pdf", "data": b"fine"}
    emulator.add_events([reply], [ok])  # broken.pdf is not stored: a 404, unless a 503 first
    # On every delivery ok.pdf downloads, broken.pdf fails twice with a 503 (the client's two
    # tries), until the bridge gives it up.
    for _ in range(TRIES):
        emulator.inject("download", 503, count=2, after=1)
    extra: dict[str, Any] = {}
    if record == "redis":
        extra = {"worker_state_redis_url": REDIS_URL, "worker_state_key_prefix": redis_prefix}
    settings = bridge_settings(names, emulator, **extra)
    ledger = emulator.events.ledger
    with capture_logs() as logs:
        if record == "redis":
            # A first process sees two deliveries fail, then stops: the count outlives it.
            async with running(settings):
                await wait_for(lambda: ledger.handed_counts["reply-1"] >= 2, what="2 deliveries")
            emulator.inject("download", 503, count=1000)
        async with running(settings):
            await wait_for(lambda: ledger.acked_counts["reply-1"] == 1, what="the reply acked")
    assert ledger.handed_counts["reply-1"] == TRIES, "published at the EVENTS_DELIVERY_TRIES-th"
    assert ledger.given_up == 0
    [message] = await take_all(replies)
    body = orjson.loads(message.body)
    attachments = {a["filename"]: a for a in body["data"]["attachments"]}
    assert attachments["ok.pdf"]["size"] == 4
    broken = attachments["broken.pdf"]["unavailable"]
    assert broken["status"] == 503
    assert broken["reason"] == "download_failed"
    assert broken["deliveries"] == TRIES
    assert broken["fetch"] == {
        "method": "GET",
        "path": ATTACHMENT_PATH,
        "sellerId": "4711",
        "ticketId": "CASE-1",
        "filename": "broken.pdf",
    }
    assert [m.message_id for m in await take_all(files)] == ["reply-1/ok.pdf"]
    errors = [e for e in logs if e["event"] == "events.attachment_not_delivered"]
    assert [e["log_level"] for e in errors] == ["error"]


async def test_without_the_tries_scx_gives_the_reply_up_after_10_deliveries(
    emulator: Emulator, names: Names, chan: AbstractChannel
) -> None:
    """What the issue found, kept as the emulator's own check: the cap is real."""
    emulator.configure(event_visibility=0.0)
    emulator.add_events([seller_event("lost", "System:Test", {})])
    for _ in range(12):
        emulator.events.poll(100)
    assert emulator.events.ledger.handed_counts["lost"] == 10
    assert emulator.events.ledger.given_up_ids == ["lost"]
    assert emulator.events.pending == 0


async def test_refused_messages_go_to_the_unrouted_queue_and_unpublishable_ones_stop_polling(
    emulator: Emulator, names: Names, chan: AbstractChannel
) -> None:
    # A full queue that refuses (reject-publish) is all the refund's routing key reaches.
    full = await bound(
        chan,
        names,
        "full",
        "scx.seller.order.refund",
        **{"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    await chan.default_exchange.publish(aio_pika.Message(b"filler"), full.name)
    await bound(chan, names, "files", "scx.system.#")
    emulator.configure(event_visibility=0.3)
    emulator.add_events([example_event("Seller:Order.Refund", "refund-1")])
    ledger = emulator.events.ledger
    settings = bridge_settings(names, emulator)
    unrouted = settings.events_unrouted_queue
    before = metric("events_unpublishable_total", type="Seller:Order.Refund")
    with capture_logs() as logs:
        async with running(settings):
            # 1. The broker refuses it: at the third delivery a copy goes to the unrouted queue.
            await wait_for(lambda: ledger.acked_counts["refund-1"] == 1, what="refund-1 acked")
            assert ledger.handed_counts["refund-1"] == TRIES
            [copy] = await take_all(await chan.get_queue(unrouted))
            assert copy.message_id == "refund-1"
            assert copy.headers["x-error-kind"] == "refused"
            assert orjson.loads(str(copy.headers["x-error-detail"]))["deliveries"] == TRIES

            # 2. Even the unrouted queue is gone (its copy comes back): unpublishable.
            await chan.queue_delete(unrouted)
            emulator.add_events([example_event("Seller:Order.Refund", "refund-2")])
            await wait_for(
                lambda: any(e["event"] == "events.unpublishable" for e in logs),
                what="refund-2 found unpublishable",
            )
            polls = ledger.polls
            await asyncio.sleep(2.0)  # sync-ok: the fault itself; no poll may come meanwhile
            assert ledger.polls == polls, "polled while nothing could be published"
            assert ledger.handed_counts["refund-2"] == TRIES
            assert metric("events_unpublishable_total", type="Seller:Order.Refund") == before + 1

            # 3. The queue is back: the held event is published, acknowledged, polls go on.
            await chan.declare_queue(
                unrouted, durable=True, arguments={"x-queue-type": settings.amqp_queue_type}
            )
            emulator.add_events([seller_event("after", "System:Test", {})])
            await wait_for(
                lambda: ledger.acked_counts["refund-2"] == 1 and ledger.acked_counts["after"] == 1,
                timeout=60,
                what="the held event and the next acknowledged",
            )
    assert ledger.given_up == 0
    [error] = [e for e in logs if e["event"] == "events.unpublishable"][:1]
    assert error["log_level"] == "error"
    assert error["deliveries"] == TRIES


async def test_a_page_of_100_is_full_whatever_the_batch_size(
    emulator: Emulator, names: Names, chan: AbstractChannel
) -> None:
    await bound(chan, names, "files", "scx.#")
    emulator.add_events([seller_event(f"p-{n}", "System:Test", {}) for n in range(250)])
    settings = bridge_settings(names, emulator, events_batch_size=1000, events_poll_interval=60)
    started = time.monotonic()
    async with running(settings):
        await wait_for(lambda: emulator.events.pending == 0, timeout=30, what="all acked")
    assert time.monotonic() - started < 30, "waited a poll interval after a full page"
    assert emulator.events.ledger.polls >= 3
