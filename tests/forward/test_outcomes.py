"""Outcome events (WORKER_OUTCOME_EVENTS): published, confirmed, then the original is acked.

Through the real broker: a queue of the test's own is bound to the exchange for the two
outcome types, as a marketplace would bind one.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.v1.event import CloudEvent
from prometheus_client import REGISTRY

from tests.support.broker import Names, collect, no_leftovers, publish, queue_depth
from tests.support.contract import schema
from tests.support.examples import SEED_EVENT_DATA, SEED_TICKET
from tests.support.forwarder import StartWorker
from tests.support.outcomes import data_of, read_outcome
from tests.support.polling import wait_for
from worker.core.settings import ConfigError, load_settings, topic_matches
from worker.emulator import Emulator
from worker.forward.outcomes import DEAD_LETTERED, FORWARDED, DeadLetteredData, ForwardedData


def binary_event(ticket_id: str, event_id: str, **data: Any) -> rabbitmq.RabbitMQMessage:
    values = copy.deepcopy(SEED_EVENT_DATA) | {"ticket_id": ticket_id} | data
    return rabbitmq.to_binary_event(
        CloudEvent({"type": "ticket.created", "source": "/m", "id": event_id}, values)
    )


def outcome_count(event_type: str, result: str) -> float:
    value = REGISTRY.get_sample_value(
        "scx_forwarder_outcome_events_total", {"type": event_type, "result": result}
    )
    return value or 0.0


async def test_each_settled_message_gets_its_outcome_event(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    outcome_queue: str,
) -> None:
    await start_worker(worker_outcome_events=True)
    good = binary_event("T-good", "evt-good")
    bad = binary_event("T-bad", "evt-bad", topic="complaint")
    emulator.inject("ticket", 422, count=1)
    rejected = orjson.dumps(SEED_TICKET | {"ticketId": "T-rejected"})
    async with no_leftovers(amqp, names):
        await publish(channel, names, [rejected], message_id="m-rejected")
        await publish(channel, names, [good.body], headers=good.headers, message_id="m-good")
        await publish(channel, names, [bad.body], headers=bad.headers, message_id="m-bad")
        await publish(channel, names, [b"\x00 not json"], message_id="m-malformed")
        outcomes = await collect(channel, outcome_queue, 4)
        await collect(channel, names.dlq, 3)

    events = {str(m.correlation_id): read_outcome(m) for m in outcomes}
    assert set(events) == {"m-good", "m-bad", "m-rejected", "m-malformed"}
    for message in outcomes:
        assert message.routing_key == message.type
        assert message.content_type == "application/cloudevents+json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        # The published contract (docs/schemas) holds for what the worker really sends.
        contract = schema(f"{str(message.type).replace('_', '-').replace('.', '-')}.schema.json")
        errors = [error.message for error in contract.iter_errors(orjson.loads(message.body))]
        assert errors == [], (message.type, errors)

    good_event = events["m-good"]
    assert good_event.get_type() == FORWARDED
    assert good_event.get_source() == f"/scx-forwarder/{names.queue}"
    assert good_event.get_subject() == "T-good"
    assert good_event.get_data() == ForwardedData(
        ticket_id="T-good",
        seller_id=SEED_EVENT_DATA["seller_id"],
        message_id="m-good",
        event_id="evt-good",
        message_identity="evt-good",
        status=201,
        attempts=1,
        files=[],
    ).model_dump(mode="json")

    dead = {m: data_of(events[m]) for m in ("m-bad", "m-rejected", "m-malformed")}
    assert {m: events[m].get_type() for m in dead} == dict.fromkeys(dead, DEAD_LETTERED)
    for data in dead.values():
        DeadLetteredData.model_validate(data)
    refused = DeadLetteredData.model_validate(dead["m-bad"])
    assert (refused.kind, refused.event_id, refused.message_id) == ("invalid", "evt-bad", "m-bad")
    assert refused.ticket_id is None, "it never became a ticket"
    assert refused.reason.startswith("invalid event: data.topic")
    assert dead["m-rejected"] == {
        "ticket_id": "T-rejected",
        "seller_id": SEED_TICKET["sellerId"],
        "message_id": "m-rejected",
        "event_id": None,
        "message_identity": "m-rejected",
        "kind": "rejected",
        "reason": "API rejected the ticket with HTTP 422",
    }
    assert dead["m-malformed"]["kind"] == "malformed"


async def test_a_delayed_message_has_no_outcome_until_it_is_settled(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    outcome_queue: str,
) -> None:
    await start_worker(worker_outcome_events=True, scx_retry_attempts=1)
    emulator.inject("ticket", 503, count=1)
    with structlog.testing.capture_logs() as logs:
        await publish(channel, names, [orjson.dumps(SEED_TICKET)], message_id="m-late")
        [outcome] = await collect(channel, outcome_queue, 1)
    assert [e["event"] for e in logs if e["event"].startswith("ticket.")].count(
        "ticket.delayed"
    ) == 1
    data = data_of(read_outcome(outcome))
    assert (data["message_id"], data["attempts"]) == ("m-late", 1)


@pytest.fixture
async def extra_queues(amqp: AbstractRobustConnection) -> AsyncIterator[list[str]]:
    """Names of queues a test declares beyond ``names``; deleted at teardown."""
    declared: list[str] = []
    yield declared
    cleanup = await amqp.channel()
    for name in declared:
        await cleanup.queue_delete(name)
    await cleanup.close()


async def test_the_original_is_not_acked_until_the_broker_took_its_outcome(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    extra_queues: list[str],
) -> None:
    # A bound queue that refuses every message: the broker nacks the outcome publish.
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    refusing, taking = f"{names.queue}.outcomes-full", f"{names.queue}.outcomes-ok"
    extra_queues += [refusing, taking]
    full = await channel.declare_queue(
        refusing, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    await full.bind(exchange, routing_key=FORWARDED)
    await start_worker(worker_outcome_events=True)
    with structlog.testing.capture_logs() as logs:
        await publish(channel, names, [orjson.dumps(SEED_TICKET)], message_id="m-held")
        await wait_for(
            lambda: any(e["event"] == "ticket.returned" for e in logs),
            what="the message handed back after the refused outcome",
        )
        failed = [e for e in logs if e["event"] == "ticket.outcome_failed"]
        assert failed
        assert {e["type"] for e in failed} == {FORWARDED}
        assert not [e for e in logs if e["event"] == "ticket.forwarded"], "never counted as done"
        assert emulator.state.accepted_total >= 1  # sent, yet not acked: at-least-once

        # Once a queue takes outcomes, the redelivered message is sent again, announced and
        # acked. Bound before the refusing one goes, so no attempt finds nobody bound.
        ok = await channel.declare_queue(taking)
        await ok.bind(exchange, routing_key=FORWARDED)
        await full.delete(if_unused=False, if_empty=False)
        async with no_leftovers(amqp, names):
            await wait_for(
                lambda: any(e["event"] == "ticket.forwarded" for e in logs),
                timeout=30,
                what="the ticket acked once its outcome was taken",
            )
    # An attempt that the refusing queue nacked may have reached the other queue as well:
    # at least one outcome, every one of them about this message.
    outcomes = await collect(channel, taking, await queue_depth(amqp, taking))
    assert outcomes
    assert {m.correlation_id for m in outcomes} == {"m-held"}
    assert emulator.state.accepted_counts[SEED_TICKET["ticketId"]] >= 2


async def test_an_outcome_nobody_is_bound_for_does_not_hold_the_ticket(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    before = outcome_count(FORWARDED, "unroutable")
    await start_worker(worker_outcome_events=True)
    async with no_leftovers(amqp, names):
        await publish(channel, names, [orjson.dumps(SEED_TICKET)])
        await wait_for(lambda: outcome_count(FORWARDED, "unroutable") == before + 1)
    assert emulator.state.accepted_total == 1


async def test_off_by_default_nothing_is_published(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    outcome_queue: str,
) -> None:
    await start_worker()
    async with no_leftovers(amqp, names):
        await publish(channel, names, [orjson.dumps(SEED_TICKET), b"[]"])
        await wait_for(lambda: emulator.state.accepted_total == 1)
        await collect(channel, names.dlq, 1)
    assert await queue_depth(amqp, outcome_queue) == 0


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("ticket.created", "ticket.created", True),
        ("ticket.created", "ticket.forwarded", False),
        ("ticket.*", "ticket.forwarded", True),
        ("*.forwarded", "ticket.forwarded", True),
        ("ticket.#", "ticket.dead_lettered", True),
        ("#", "ticket.forwarded", True),
        ("#.forwarded", "ticket.forwarded", True),
        ("ticket.#.x", "ticket.forwarded", False),
        ("ticket.*.*", "ticket.forwarded", False),
        ("ticket", "ticket.forwarded", False),
    ],
)
def test_topic_matching(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_a_binding_that_would_consume_the_outcomes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORKER_OUTCOME_EVENTS", "1")
    monkeypatch.setenv("AMQP_BINDING_KEY", "ticket.#")
    with pytest.raises(ConfigError, match=r"own 'ticket\.forwarded' events"):
        load_settings()
    monkeypatch.setenv("AMQP_BINDING_KEY", "ticket.created")
    assert load_settings().worker_outcome_events is True
