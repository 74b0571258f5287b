"""The whole path: real RabbitMQ -> in-process forwarder -> emulator over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import MutableMapping
from typing import Any

import orjson
import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from tests.support.broker import (
    Names,
    close_broker_connections,
    collect,
    no_leftovers,
    publish,
    queue_depth,
)
from tests.support.events import event
from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.proxy import TcpProxy
from worker.emulator import Emulator
from worker.ops.samples import INVALID_SAMPLES


def by_id(messages: list[AbstractIncomingMessage]) -> dict[str, AbstractIncomingMessage]:
    return {str(m.message_id): m for m in messages}


async def test_valid_events_are_forwarded_exactly_once_with_the_mapping(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker()
    bodies = [event(i) for i in range(40)]
    featured = orjson.dumps(
        {
            "id": "evt-featured",
            "type": "ticket.created",
            "data": {
                **SEED_EVENT_DATA,
                "created_at": "2023-11-07T05:31:56+02:00",
                "internal_note": "never sent",
            },
        }
    )
    api_shaped = orjson.dumps(
        {
            "sellerId": "s_2",
            "ticketId": "API-1",
            "topic": "REFUND",
            "createdAt": "2024-01-01T00:00:00Z",
            "from": {"role": "SELLER"},
            "subject": "s",
            "message": "m",
            "replyRequested": False,
        }
    )
    async with no_leftovers(amqp, names):
        await publish(channel, names, [*bodies, featured, api_shaped])
        await wait_for(lambda: len(emulator.state.accepted) == 42, what="42 accepted")

    assert set(emulator.state.accepted_counts.values()) == {1}
    accepted = {t["ticketId"]: t for t in emulator.state.accepted}
    assert accepted["CASE-01071982"] == {**SEED_TICKET, "createdAt": "2023-11-07T05:31:56+02:00"}
    assert accepted["API-1"]["replyRequested"] is False
    assert accepted["API-1"]["from"] == {"role": "SELLER"}
    assert await queue_depth(amqp, names.dlq) == 0
    assert emulator.state.auth_calls == 1


async def test_every_class_of_bad_input_is_dead_lettered_and_the_worker_goes_on(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker()
    cases: dict[str, tuple[bytes, str, str | None]] = {
        # message id: (body, expected kind, a field path the detail must name)
        **{f"bad-{i}": (body, kind, None) for i, (kind, body) in enumerate(INVALID_SAMPLES)},
        "not-object": (b'"just a string"', "malformed", None),
        "naive-time": (event(1, created_at="2024-05-14T10:07:42"), "invalid", "data.created_at"),
        "bad-topic": (event(2, topic="complaint"), "invalid", "data.topic"),
        "long-name": (
            event(3, author={"role": "buyer", "name": "x" * 101}),
            "invalid",
            "data.author.name",
        ),
        "eleven-files": (
            event(4, attachments=[{"filename": "a.png", "content_type": "image/png"}] * 11),
            "invalid",
            "data.attachments",
        ),
        "bad-seller": (event(5, seller_id="Mëller"), "invalid", "data.seller_id"),
    }
    for message_id, (body, _, _) in cases.items():
        await publish(
            channel,
            names,
            [body],
            message_id=message_id,
            content_type="application/json",
            headers={"x-marketplace": "m1"},
            correlation_id=f"corr-{message_id}",
        )
    dead = by_id(await collect(channel, names.dlq, len(cases)))
    # The worker is still alive and forwards what comes next.
    await publish(channel, names, [event(99)])
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="the valid one after")
    assert set(dead) == set(cases)
    for message_id, (body, kind, path) in cases.items():
        message = dead[message_id]
        headers = message.headers
        assert message.body == body, "the original body is kept byte for byte"
        assert message.content_type == "application/json"
        assert message.correlation_id == f"corr-{message_id}"
        assert headers["x-marketplace"] == "m1"
        assert headers["x-error-kind"] == kind, message_id
        assert headers["x-original-queue"] == names.queue
        assert headers["x-original-exchange"] == names.exchange
        assert headers["x-original-routing-key"] == names.binding_key
        assert headers["x-attempts"] == 0
        detail = orjson.loads(str(headers["x-error-detail"]))
        if path is not None:
            locations = [error["loc"] for error in detail["errors"]]
            assert any(loc.startswith(path) for loc in locations), (message_id, locations)
    assert emulator.state.ticket_calls == 1, "nothing invalid reaches the API"


async def test_api_4xx_is_dead_lettered_as_rejected_with_the_error_list(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker()
    emulator.inject("ticket", 422, count=1)
    await publish(channel, names, [event(1)], message_id="m-422")
    [message] = await collect(channel, names.dlq, 1)
    assert message.headers["x-error-kind"] == "rejected"
    assert message.headers["x-attempts"] == 1
    detail = orjson.loads(str(message.headers["x-error-detail"]))
    assert detail["status"] == 422
    assert [error["code"] for error in detail["errorList"]] == ["EMU422"]
    assert emulator.state.accepted == []


async def test_injected_5xx_and_429_are_retried_to_success(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker()
    emulator.inject("ticket", 503, count=2)
    emulator.inject("ticket", 429, count=1, retry_after=0.2)
    emulator.inject("ticket", 500, count=1)
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(7)])
        await wait_for(lambda: len(emulator.state.accepted) == 1, what="accepted after retries")
    assert emulator.state.statuses[503] == 2
    assert emulator.state.statuses[429] == 1
    assert emulator.state.statuses[500] == 1
    assert emulator.state.statuses[201] == 1
    assert await queue_depth(amqp, names.dlq) == 0


def events_named(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_message_whose_retries_run_out_waits_in_a_delay_queue_then_is_forwarded(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker(scx_retry_attempts=2)
    emulator.inject("ticket", 503, count=2)
    with structlog.testing.capture_logs() as logs:
        async with no_leftovers(amqp, names):
            await publish(channel, names, [event(8)], message_id="m-503")
            await wait_for(lambda: len(emulator.state.accepted) == 1, what="the retried send")
    [delayed] = events_named(logs, "ticket.delayed")
    assert (delayed["delay_s"], delayed["retry_count"], delayed["attempts"]) == (0.3, 1, 2)
    assert emulator.state.ticket_calls == 3
    assert await queue_depth(amqp, names.dlq) == 0
    assert await queue_depth(amqp, names.retry(0.3)) == 0


async def test_delays_follow_the_list_then_repeat_the_last_one(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker(scx_retry_attempts=1)
    emulator.inject("ticket", 503, count=3)
    with structlog.testing.capture_logs() as logs:
        await publish(channel, names, [event(8)])
        await wait_for(lambda: len(emulator.state.accepted) == 1, timeout=30, what="acceptance")
    delayed = events_named(logs, "ticket.delayed")
    assert [(e["retry_count"], e["delay_s"]) for e in delayed] == [(1, 0.3), (2, 1.0), (3, 1.0)]


async def test_past_the_maximum_age_a_failing_message_is_dead_lettered_as_exhausted(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    # 1 s: the first delay (0.3 s) comes back well inside it even on a loaded machine, where
    # the delay queue's expiry and the redelivery took more than 0.2 s; the second (1 s) not.
    await start_worker(scx_retry_attempts=1, worker_retry_max_age=1.0)
    emulator.inject("ticket", 503, count=10)
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(8)], message_id="m-old")
        [message] = await collect(channel, names.dlq, 1, timeout=30)
    headers = message.headers
    # Delayed 0.3 s (0.3 s old), then 1 s: 1.3 s since the first failure is past 1 s.
    assert headers["x-error-kind"] == "exhausted"
    assert headers["x-retry-count"] == 2
    assert str(headers["x-error-reason"]).startswith("still failing after 2 delays")
    detail = orjson.loads(str(headers["x-error-detail"]))
    assert detail["retries"] == 2
    assert detail["firstFailureAt"] == headers["x-first-failure-at"]
    assert detail["status"] == 503
    assert emulator.state.ticket_calls == 3


async def test_without_a_delay_stage_a_failing_message_is_exhausted_at_once(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker(scx_retry_attempts=3, worker_retry_delays=())
    emulator.inject("ticket", 503, count=3)
    await publish(channel, names, [event(8)], message_id="m-503")
    [message] = await collect(channel, names.dlq, 1)
    assert message.headers["x-error-kind"] == "exhausted"
    assert message.headers["x-attempts"] == 3
    detail = orjson.loads(str(message.headers["x-error-detail"]))
    assert (detail["status"], detail["attempts"], detail["retries"]) == (503, 3, 0)
    assert emulator.state.ticket_calls == 3


async def test_an_outage_longer_than_the_budget_loses_nothing_and_costs_few_calls(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker(scx_retry_budget=0.5, scx_breaker_failures=3, scx_breaker_cooldown=0.25)
    emulator.configure(fail_rate=1.0)
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(i) for i in range(50)])
        await wait_for(lambda: emulator.state.ticket_calls >= 3, what="the outage to be hit")

        async def delayed_twice() -> bool:
            return await queue_depth(amqp, names.retry(1.0)) > 0

        await wait_for(delayed_twice, what="messages delayed twice")
        during = emulator.state.ticket_calls
        emulator.configure(fail_rate=0.0)
        await wait_for(lambda: len(emulator.state.accepted) == 50, timeout=30, what="all 50")
    assert set(emulator.state.accepted_counts.values()) == {1}
    assert await queue_depth(amqp, names.dlq) == 0
    # 16 concurrent first calls, then one probe per cooldown (0.25 s, 0.5 s, 1 s, ...).
    assert during <= 16 + 10, during


async def test_a_message_is_not_acked_while_its_delayed_copy_cannot_be_stored(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    amqp: AbstractRobustConnection,
) -> None:
    worker = await start_worker(scx_retry_attempts=1)
    await channel.queue_delete(names.retry(0.3))
    emulator.inject("ticket", 503)
    with structlog.testing.capture_logs() as logs:
        await publish(channel, names, [event(3)], message_id="parked")
        await wait_for(
            lambda: bool(events_named(logs, "ticket.delay_failed")), what="a failed delay"
        )
        assert await worker.stop() == 0
    assert await queue_depth(amqp, names.queue) == 1, "the message went back, not away"
    await start_worker()
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="the send after the restart")


async def test_token_expiry_mid_run_is_one_refresh_for_many_concurrent_requests(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    amqp: AbstractRobustConnection,
) -> None:
    # 2 s tokens, refreshed 0.4 s early: a margin that a busy two-core CI machine's event
    # loop lag does not eat (at 1 s tokens and 0.2 s it did, now and then).
    emulator.configure(token_lifetime=2.0, latency=0.1)
    await start_worker(worker_concurrency=32, amqp_prefetch=64)
    count = 1200
    started = time.monotonic()
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(i) for i in range(count)])
        await wait_for(lambda: len(emulator.state.accepted) == count, what="all accepted")
    elapsed = time.monotonic() - started
    state = emulator.state
    assert state.max_concurrent_ticket_calls >= 8, "requests really ran concurrently"
    assert state.unauthorized == 0, "tokens are refreshed before they lapse"
    # One refresh per token lifetime (less the margin), however many requests are waiting.
    assert 2 <= state.auth_calls <= elapsed / 1.6 + 2, (state.auth_calls, elapsed)
    assert set(state.accepted_counts.values()) == {1}


async def test_a_401_is_answered_with_one_refresh_and_one_resend(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker(worker_concurrency=1)
    await publish(channel, names, [event(1)])
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="first accepted")
    emulator.revoke_tokens()
    await publish(channel, names, [event(2)])
    await wait_for(lambda: len(emulator.state.accepted) == 2, what="second accepted")
    assert emulator.state.unauthorized == 1
    assert emulator.state.auth_calls == 2
    assert emulator.state.ticket_calls == 3


async def test_concurrency_is_bounded_by_the_setting(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    emulator.configure(latency=0.1)
    await start_worker(worker_concurrency=4, amqp_prefetch=10)
    await publish(channel, names, [event(i) for i in range(24)])
    await wait_for(lambda: len(emulator.state.accepted) == 24, what="all accepted")
    assert emulator.state.max_concurrent_ticket_calls == 4


async def test_pacing_keeps_a_healthy_worker_under_the_rate_limit(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    # 10 calls per 1 s window at the API; the worker paces at 9 per second.
    emulator.configure(rate_limit=10, rate_interval=1.0)
    await start_worker(scx_max_requests_per_minute=540)
    started = time.monotonic()
    await publish(channel, names, [event(i) for i in range(25)])
    await wait_for(lambda: len(emulator.state.accepted) == 25, what="all accepted")
    assert emulator.state.statuses[429] == 0
    assert time.monotonic() - started >= 24 / 9 - 0.1


def uppercase_mapper(event: dict[str, Any]) -> dict[str, Any]:
    """A marketplace with its own format: {"shop": ..., "case": ..., "text": ...}."""
    return {
        "sellerId": event["shop"],
        "ticketId": event["case"],
        "topic": "FEEDBACK",
        "createdAt": "2024-01-01T12:00:00Z",
        "from": {"role": "BUYER"},
        "subject": event["text"].upper(),
        "message": event["text"],
    }


async def test_a_mapper_hook_plugs_in_another_event_format(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker(mapper=uppercase_mapper)
    await publish(
        channel,
        names,
        [
            orjson.dumps({"shop": "shop_1", "case": "C-1", "text": "hello"}),
            orjson.dumps({"shop": "shop_1", "text": "no case"}),  # the mapper raises KeyError
        ],
    )
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="the mapped ticket")
    [message] = await collect(channel, names.dlq, 1)
    assert emulator.state.accepted[0]["subject"] == "HELLO"
    assert message.headers["x-error-kind"] == "invalid"
    assert "KeyError" in str(message.headers["x-error-detail"])


async def test_stop_finishes_in_flight_messages_and_returns_the_rest(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    emulator.configure(latency=0.5)
    worker = await start_worker(worker_concurrency=3, amqp_prefetch=10)
    await publish(channel, names, [event(i) for i in range(10)])
    await wait_for(lambda: emulator.state.ticket_calls == 3, what="three calls in flight")
    assert await worker.stop() == 0
    # The three in flight were finished, the seven prefetched ones went back to the queue.
    assert len(emulator.state.accepted) == 3
    assert await queue_depth(amqp, names.queue) == 7
    await start_worker()
    await wait_for(lambda: len(emulator.state.accepted) == 10, what="the rest by a new worker")
    assert set(emulator.state.accepted_counts.values()) == {1}


async def test_stop_returns_messages_still_waiting_for_a_pacing_slot_at_once(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    worker = await start_worker(scx_max_requests_per_minute=6, worker_concurrency=4)
    await publish(channel, names, [event(i) for i in range(4)])
    # One is sent at once; the other three hold slots 10, 20 and 30 s ahead.
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="the first send")
    started = time.monotonic()
    assert await worker.stop() == 0
    assert time.monotonic() - started < 2.0, "the drain does not wait out the pacing"
    assert emulator.state.ticket_calls == 1
    assert await queue_depth(amqp, names.queue) == 3


async def test_a_message_is_not_acked_while_its_dead_letter_copy_cannot_be_stored(
    start_worker: StartWorker,
    channel: AbstractChannel,
    names: Names,
    amqp: AbstractRobustConnection,
) -> None:
    worker = await start_worker()
    await channel.queue_delete(names.dlq)  # an operator deletes the DLQ under the worker
    with structlog.testing.capture_logs() as logs:
        await publish(channel, names, [b"not json"], message_id="orphan")
        await wait_for(
            lambda: any(e["event"] == "ticket.dead_letter_failed" for e in logs),
            what="a failed dead-letter attempt",
        )
        started = time.monotonic()
        assert await worker.stop() == 0
    assert time.monotonic() - started < 2, "stopping does not wait out the hold"
    assert not any(e["event"] == "ticket.dead_lettered" for e in logs)
    assert [e["event"] for e in logs].count("ticket.dead_letter_failed") == 1, "no hot loop"
    assert await queue_depth(amqp, names.queue) == 1, "the message went back, not away"

    await start_worker()  # declares the DLQ again
    [message] = await collect(channel, names.dlq, 1)
    assert message.message_id == "orphan"
    assert message.headers["x-error-kind"] == "malformed"


async def test_dead_letter_topology_catches_messages_over_the_delivery_limit(
    start_worker: StartWorker, channel: AbstractChannel, names: Names
) -> None:
    """A message returned again and again (a poison message) ends in the DLQ by itself."""
    worker = await start_worker(amqp_delivery_limit=2)
    await worker.stop()
    await publish(channel, names, [b'{"poison": true}'], message_id="poison")
    queue = await channel.declare_queue(names.queue, passive=True)
    for _ in range(3):  # delivered, returned; three returns exceed a limit of 2
        message = None

        async def got_one() -> bool:
            nonlocal message
            message = await queue.get(no_ack=False, fail=False)
            return message is not None

        await wait_for(got_one, what="the poison message back in the queue")
        assert message is not None
        await message.nack(requeue=True)
    [dead] = await collect(channel, names.dlq, 1)
    assert dead.message_id == "poison"
    assert dead.body == b'{"poison": true}'
    assert dead.headers["x-first-death-reason"] == "delivery_limit"


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_queue_type_is_configurable(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    queue_type: str,
) -> None:
    await start_worker(amqp_queue_type=queue_type)
    await publish(channel, names, [event(1)])
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="accepted")
    # Re-declaring with the type's own arguments succeeds only if the type matches.
    from worker.amqp.topology import queue_arguments
    from worker.core.settings import Settings

    expected = Settings(amqp_queue=names.queue, amqp_queue_type=queue_type)
    await channel.declare_queue(names.queue, durable=True, arguments=queue_arguments(expected))


async def test_worker_resumes_after_the_broker_drops_its_connection(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await start_worker()
    await publish(channel, names, [event(1)])
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="first accepted")
    closed = await close_broker_connections(f"scx-forwarder {names.queue}")
    assert closed == 1
    await publish(channel, names, [event(2)])
    await wait_for(
        lambda: len(emulator.state.accepted) == 2, what="accepted after reconnect", timeout=30
    )
    assert set(emulator.state.accepted_counts.values()) == {1}


async def test_after_a_dropped_connection_only_the_in_flight_message_is_sent_twice(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    emulator.configure(latency=0.3)
    await start_worker(worker_concurrency=1, amqp_prefetch=6)
    await publish(channel, names, [event(i) for i in range(6)])
    await wait_for(lambda: emulator.state.ticket_calls == 1, what="the first call in flight")
    assert await close_broker_connections(f"scx-forwarder {names.queue}") == 1
    await wait_for(
        lambda: len(emulator.state.accepted_counts) == 6, what="all six after the reconnect"
    )
    # The five waiting for their turn were skipped (the broker redelivers them), not sent
    # on a dead channel; only the one in flight may reach the API twice.
    assert sum(emulator.state.accepted_counts.values()) <= 7


async def test_worker_resumes_after_the_broker_was_unreachable(
    start_worker: StartWorker, emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    # The machine's broker is never stopped: a proxy makes it vanish for the worker alone
    # (its connection dropped, every reconnect refused), as a broker restart looks to it.
    proxy = await TcpProxy().start()
    try:
        await start_worker(amqp_url=proxy.url)
        await publish(channel, names, [event(1)])
        await wait_for(lambda: len(emulator.state.accepted) == 1, what="first accepted")
        await proxy.cut()
        await publish(channel, names, [event(2)])  # arrives while the worker is away
        await asyncio.sleep(2.0)  # sync-ok: the outage itself, reconnects refused meanwhile
        assert len(emulator.state.accepted) == 1
        await proxy.restore()
        await wait_for(
            lambda: len(emulator.state.accepted) == 2, what="accepted after the outage", timeout=60
        )
        assert set(emulator.state.accepted_counts.values()) == {1}
    finally:
        await proxy.close()
