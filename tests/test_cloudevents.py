"""CloudEvents as publishers send them, through the real broker to the emulator.

Every message here is written by the ``cloudevents`` SDK (its RabbitMQ and AMQP bindings) and
published with aio-pika as the SDK's ``RabbitMQMessage`` says: headers, content type, body.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from cloudevents.core.bindings import amqp as amqp_binding
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.v1.event import CloudEvent

from tests.support.broker import Names, collect, no_leftovers, publish
from tests.support.examples import SEED_EVENT_DATA
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.settings import make_settings
from worker.emulator import Emulator
from worker.ops import dlq
from worker.ops.publish import publish_lines
from worker.ops.samples import sample_lines


def ticket_event(ticket_id: str, event_id: str, *, raw: bool = False) -> CloudEvent:
    data: dict[str, Any] = copy.deepcopy(SEED_EVENT_DATA) | {"ticket_id": ticket_id}
    attributes = {"type": "ticket.created", "source": "/marketplace/eu", "id": event_id}
    return CloudEvent(attributes, orjson.dumps(data) if raw else data)


async def test_binary_structured_and_batch_messages_from_the_sdk(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker()
    ce_binary = rabbitmq.to_binary_event(ticket_event("T-ce", "evt-ce"))
    amqp_binary = amqp_binding.to_binary_event(ticket_event("T-amqp", "evt-amqp"))
    structured = rabbitmq.to_structured_event(ticket_event("T-b64", "evt-b64", raw=True))
    batch = orjson.dumps([{"id": "evt-1", "data": SEED_EVENT_DATA}])
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with no_leftovers(amqp, names):
            await publish(
                channel,
                names,
                [ce_binary.body],
                headers=ce_binary.headers,
                content_type=ce_binary.content_type,
                message_id="m-ce",
            )
            await publish(
                channel,
                names,
                [amqp_binary.application_data],
                headers=amqp_binary.application_properties,
                message_id="m-amqp",
            )
            await publish(
                channel,
                names,
                [structured.body],
                content_type=structured.content_type,
                message_id="m-b64",
            )
            await publish(
                channel,
                names,
                [batch],
                content_type="application/cloudevents-batch+json",
                message_id="m-batch",
            )
            await wait_for(lambda: len(emulator.state.accepted) == 3, what="3 accepted")
            [dead] = await collect(channel, names.dlq, 1)

    assert sorted(t["ticketId"] for t in emulator.state.accepted) == ["T-amqp", "T-b64", "T-ce"]
    assert dead.message_id == "m-batch"
    assert dead.headers["x-error-kind"] == "invalid"
    assert "batches" in str(dead.headers["x-error-reason"])
    assert "not accepted" in str(dead.headers["x-error-reason"])
    # A message's log lines carry its identity as message_id: the CloudEvents id when it has
    # one, else the AMQP message id (worker.forward.identity).
    forwarded = {e["message_id"]: e for e in logs if e["event"] == "ticket.forwarded"}
    assert {m: e.get("event_id") for m, e in forwarded.items()} == {
        "evt-ce": "evt-ce",
        "evt-amqp": "evt-amqp",
        "evt-b64": "evt-b64",
    }
    assert forwarded["evt-ce"]["ticket_id"] == "T-ce"
    [batch_line] = [e for e in logs if e["event"] == "ticket.dead_lettered"]
    assert (batch_line["message_id"], batch_line["message_id_source"]) == ("m-batch", "amqp")
    assert "event_id" not in batch_line


async def test_an_invalid_binary_event_is_logged_with_its_id(
    start_worker: StartWorker, channel: AbstractChannel, names: Names
) -> None:
    await start_worker()
    message = rabbitmq.to_binary_event(
        CloudEvent({"type": "ticket.created", "source": "/m", "id": "evt-bad"}, {"seller_id": 1})
    )
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await publish(channel, names, [message.body], headers=message.headers, message_id="m-bad")
        [dead] = await collect(channel, names.dlq, 1)
    detail = orjson.loads(str(dead.headers["x-error-detail"]))
    assert "data.seller_id" in [e["loc"] for e in detail["errors"]]
    assert dead.headers["ce-id"] == "evt-bad", "the DLQ copy keeps the attributes"
    [line] = [e for e in logs if e["event"] == "ticket.dead_lettered"]
    assert (line["message_id"], line["event_id"]) == ("evt-bad", "evt-bad")
    assert dead.headers["x-scx-message-id"] == "evt-bad"


async def test_the_dlq_toolkit_finds_binary_events_by_ticket_id(
    start_worker: StartWorker, channel: AbstractChannel, names: Names, emulator: Emulator
) -> None:
    running = await start_worker()
    bad = rabbitmq.to_binary_event(ticket_event("T-find-me", "evt-f"))
    emulator.inject("ticket", 422, count=1)
    await publish(channel, names, [bad.body], headers=bad.headers, message_id="m-find")
    await wait_for(lambda: emulator.state.ticket_calls == 1, what="the rejected call")
    await running.stop()
    outcome = await dlq.list_entries(
        make_settings(names, emulator), dlq.Filter(ticket_id="T-find-me")
    )
    assert [(e.message_id, e.ticket_id, e.kind) for e in outcome.entries] == [
        ("m-find", "T-find-me", "rejected")
    ]


async def test_publish_can_send_the_samples_in_binary_mode(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    lines = list(sample_lines(3, invalid=1, seed=1))
    settings = make_settings(names, emulator)
    assert await publish_lines(settings, lines, cloudevents="binary") == 4

    peek = await amqp.channel()
    queue = await peek.declare_queue(names.queue, passive=True)
    first = await queue.get(no_ack=False)
    assert first.headers["ce-specversion"] == "1.0"
    assert first.headers["ce-id"] == first.message_id
    assert "data" not in orjson.loads(first.body), "the body is the data alone"
    await peek.close()  # hands the message back

    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        async with no_leftovers(amqp, names):
            await start_worker()
            await wait_for(lambda: len(emulator.state.accepted) == 3, what="3 accepted")
            await collect(channel, names.dlq, 1)
    forwarded = [e for e in logs if e["event"] == "ticket.forwarded"]
    assert sorted(e["event_id"] for e in forwarded) == sorted(
        orjson.loads(line)["id"] for line in lines[:3]
    )
