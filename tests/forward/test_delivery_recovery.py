"""Attachments after things went wrong, with the progress record in the machine's Redis: a
redelivery, Redis going away, a kill -9, a broker restart. Through the real parts."""

from __future__ import annotations

import base64
import random
import signal
from collections import Counter

import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from prometheus_client import REGISTRY

from tests.support.broker import Names, close_broker_connections, no_leftovers, publish, queue_depth
from tests.support.endpoints import REDIS_URL
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn, worker_env
from tests.support.proxy import TcpProxy
from worker.emulator import Emulator
from worker.ops.samples import valid_event


def event(index: int, files: int) -> bytes:
    body = valid_event(index, random.Random(index))
    body["data"]["attachments"] = [
        {
            "filename": f"file {n}.txt",
            "content_type": "text/plain",
            "content_base64": base64.b64encode(
                f"ticket {index} file {n}\n".encode() * 100
            ).decode(),
        }
        for n in range(files)
    ]
    return orjson.dumps(body)


def stores_per_ticket(emulator: Emulator) -> Counter[str]:
    return Counter(ticket for (_, ticket, _) in emulator.files.files)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def delayed_total() -> float:
    """Messages parked in the delay stage so far, whatever the reason."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "scx_forwarder_tickets_delayed"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def test_a_redelivered_message_skips_every_step_the_record_holds(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    redis_prefix: str,
) -> None:
    await start_worker(worker_state_redis_url=REDIS_URL, worker_state_key_prefix=redis_prefix)
    body = event(1, files=2)
    skipped = metric("scx_forwarder_steps_skipped_total", step="upload", source="redis")
    async with no_leftovers(amqp, names):
        await publish(channel, names, [body])
        await wait_for(lambda: len(emulator.files.files) == 2, what="both files")
        calls = sum(emulator.state.channel_calls.values())
        await publish(channel, names, [body, event(2, files=0)])  # the same one again
        await wait_for(lambda: emulator.state.accepted_total == 2, what="the second ticket")
    await wait_for(
        lambda: (
            metric("scx_forwarder_steps_skipped_total", step="upload", source="redis")
            == skipped + 2
        ),
        what="two uploads skipped",
    )
    assert emulator.state.accepted_counts["T-000001"] == 1, "the ticket was not sent again"
    assert emulator.files.duplicates == 0
    assert sum(emulator.state.channel_calls.values()) == calls + 1, "only the other ticket"
    assert await queue_depth(amqp, names.dlq) == 0


async def test_redis_going_away_holds_the_message_in_the_delay_stage_and_loses_no_step(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    redis_prefix: str,
) -> None:
    """Documented: Redis configured but unreachable is a transient failure, never a guess."""
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    try:
        await start_worker(
            worker_state_redis_url=f"redis://{proxy.address}/0",
            worker_state_key_prefix=redis_prefix,
        )
        delayed = delayed_total()
        emulator.configure(latency=0.5)
        await publish(channel, names, [event(3, files=2)])
        # Redis goes away while the ticket call is out: the ticket exists, its record does not.
        await wait_for(lambda: emulator.state.ticket_calls == 1, what="the ticket call")
        await proxy.cut()
        await wait_for(lambda: emulator.state.accepted_total == 1, what="the ticket created")
        await wait_for(
            lambda: delayed_total() >= delayed + 2,
            timeout=30,
            what="the message parked in the delay stage, twice",
        )
        assert emulator.state.channel_calls["upload"] == 0, "no step done on a guess"
        emulator.configure(latency=0.0)
        await proxy.restore()
        await wait_for(lambda: len(emulator.files.files) == 2, timeout=30, what="the files")
        assert emulator.state.ticket_calls == 1, "the header said the ticket exists"
        assert emulator.files.duplicates == 0
        assert await queue_depth(amqp, names.dlq) == 0
    finally:
        await proxy.cut()


TICKETS = 6
FILES = 5


async def kill_in_the_middle_of_uploads(emulator: Emulator) -> int:
    """Wait until every ticket exists and has a file, with uploads left; the uploads stored."""

    def middle() -> bool:
        per_ticket = stores_per_ticket(emulator)
        return len(per_ticket) == TICKETS and emulator.state.accepted_total == TICKETS

    await wait_for(middle, timeout=30, what="every ticket created with a file uploaded")
    stored = len(emulator.files.files)
    assert stored < TICKETS * FILES, "uploads were left when the blow fell"
    return stored


@pytest.mark.timeout(120)
async def test_kill_9_in_the_middle_of_uploads_repeats_no_ticket_and_at_most_the_uploads_in_flight(
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    redis_prefix: str,
    processes: list[Process],
) -> None:
    emulator.configure(latency=0.4)
    env = worker_env(
        names,
        emulator,
        WORKER_STATE_REDIS_URL=REDIS_URL,
        WORKER_STATE_KEY_PREFIX=redis_prefix,
        WORKER_ATTACHMENT_CONCURRENCY=str(TICKETS),
        AMQP_PREFETCH=str(TICKETS),
    )
    victim = await spawn("run", env=env)
    processes.append(victim)
    await wait_for(lambda: victim.has_event("worker.consuming"), what="the worker to consume")
    await publish(channel, names, [event(10 + i, files=FILES) for i in range(TICKETS)])
    await kill_in_the_middle_of_uploads(emulator)

    victim.process.kill()
    assert await victim.wait() == -signal.SIGKILL
    emulator.configure(latency=0.0)
    successor = await spawn("run", env=env)
    processes.append(successor)
    await wait_for(
        lambda: len(emulator.files.files) == TICKETS * FILES, timeout=60, what="every file"
    )
    async with no_leftovers(amqp, names):
        await wait_for(lambda: successor.has_event("ticket.forwarded"), what="an ack")
    assert set(emulator.state.accepted_counts.values()) == {1}, "no ticket created twice"
    assert emulator.files.duplicates <= TICKETS, "at most one upload in flight per message"
    assert await queue_depth(amqp, names.dlq) == 0
    successor.process.send_signal(signal.SIGTERM)
    assert await successor.wait() == 0


@pytest.mark.timeout(120)
async def test_a_broker_restart_during_uploads_repeats_no_ticket(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    redis_prefix: str,
) -> None:
    emulator.configure(latency=0.4)
    await start_worker(
        worker_state_redis_url=REDIS_URL,
        worker_state_key_prefix=redis_prefix,
        worker_attachment_concurrency=TICKETS,
    )
    await publish(channel, names, [event(20 + i, files=FILES) for i in range(TICKETS)])
    await kill_in_the_middle_of_uploads(emulator)

    # What a broker restart does to the worker: its connection is closed under it, every
    # unacked message is delivered again (here, to the same worker once it reconnected).
    assert await close_broker_connections(f"scx-forwarder {names.queue} ") == 1
    emulator.configure(latency=0.0)
    await wait_for(
        lambda: len(emulator.files.files) == TICKETS * FILES, timeout=60, what="every file"
    )

    async def settled() -> bool:
        return await queue_depth(amqp, names.queue) == 0

    await wait_for(settled, timeout=30, what="the work queue empty")
    assert set(emulator.state.accepted_counts.values()) == {1}, "no ticket created twice"
    assert emulator.files.duplicates <= TICKETS, "at most one upload in flight per message"
    assert await queue_depth(amqp, names.dlq) == 0
