"""worker.amqp.broker: a list of nodes, tried in turn, and a worker that stops while they are gone.

The nodes here are TCP proxies to the one real broker (``tests/support/proxy.py``): cutting a proxy
is losing that node, for this client only.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from structlog.testing import capture_logs
from yarl import URL

from tests.support.broker import Names, publish, queue_depth
from tests.support.endpoints import AMQP_URL
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn, worker_env
from tests.support.proxy import TcpProxy
from worker.amqp import broker
from worker.core.settings import Settings
from worker.emulator import Emulator
from worker.ops.samples import valid_event

REAL = URL(AMQP_URL)


@pytest.fixture
async def proxies() -> AsyncIterator[list[TcpProxy]]:
    """Three "nodes": proxies to the real broker, closed at teardown."""
    started = [await TcpProxy(REAL.host or "127.0.0.1", REAL.port or 5672).start() for _ in "abc"]
    yield started
    for proxy in started:
        await proxy.close()


def _settings(url: str, names: Names) -> Settings:
    return Settings(amqp_url=url, amqp_queue=names.queue, amqp_exchange=names.exchange)


async def test_connect_skips_nodes_that_refuse_and_logs_them_redacted(names: Names) -> None:
    refused = "amqp://someone:hunter2@127.0.0.1:1/"
    settings = _settings(f"{refused}, {AMQP_URL}", names)
    with capture_logs() as logs:
        connection = await broker.connect(settings, "check")
    async with connection:
        assert connection.url == REAL
    (skipped,) = [entry for entry in logs if entry["event"] == "broker.node_unreachable"]
    assert skipped["node"] == "amqp://someone:***@127.0.0.1:1/"
    assert "hunter2" not in repr(logs)


async def test_connect_raises_the_last_error_when_no_node_answers(names: Names) -> None:
    settings = _settings("amqp://a:pw1@127.0.0.1:1/,amqp://b:pw2@127.0.0.1:2/", names)
    with pytest.raises(OSError) as caught:
        await broker.connect(settings, "publish")
    assert "pw1" not in str(caught.value)
    assert "pw2" not in str(caught.value)


async def test_losing_the_node_moves_the_connection_and_its_consumer_to_the_next(
    names: Names, proxies: list[TcpProxy], channel: AbstractChannel
) -> None:
    settings = _settings(",".join(proxy.url for proxy in proxies), names)
    connection = await broker.connect_robust(settings, "run")
    received: asyncio.Queue[bytes] = asyncio.Queue()
    async with connection:
        consuming = await connection.channel()
        queue = await consuming.declare_queue(names.queue, durable=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            await received.put(message.body)

        await queue.consume(on_message)
        assert connection.url.port == proxies[0].port

        await proxies[0].cut()
        await wait_for(
            lambda: connection.connected.is_set() and connection.url.port == proxies[1].port,
            timeout=30,
            what="the reconnect to the second node",
        )
        await channel.default_exchange.publish(
            aio_pika.Message(b"after the failover"), routing_key=names.queue
        )
        assert await asyncio.wait_for(received.get(), 20) == b"after the failover"


async def test_connection_name_is_built_once_for_every_command(names: Names) -> None:
    settings = _settings(AMQP_URL, names)
    for command in ("run", "events", "publish", "dlq", "check"):
        name = broker.connection_name(settings, command)
        assert name.startswith(f"scx-forwarder {names.queue} {command} ")


@pytest.mark.timeout(120)
async def test_sigterm_while_every_node_is_gone_exits_0_within_the_grace(
    names: Names,
    emulator: Emulator,
    proxies: list[TcpProxy],
    amqp: AbstractRobustConnection,
    channel: AbstractChannel,
) -> None:
    """The worker waits for a reconnect that never comes; SIGTERM must still end it."""
    grace = 5.0
    emulator.configure(latency=0.3)  # requests in flight when the broker goes
    env = worker_env(
        names,
        emulator,
        AMQP_URL=",".join(proxy.url for proxy in proxies[:2]),
        WORKER_SHUTDOWN_GRACE=f"{grace:g}",
        WORKER_CONCURRENCY="4",
        AMQP_PREFETCH="8",
    )
    worker = await spawn("run", env=env)
    try:
        await _wait_event(worker, "worker.consuming")
        rng = random.Random(5)
        bodies = [orjson.dumps(valid_event(i, rng)) for i in range(40)]
        await publish(channel, names, bodies)
        await wait_for(lambda: emulator.state.ticket_calls >= 4, what="requests in flight")

        for proxy in proxies:
            await proxy.cut()
        await _wait_event(worker, "broker.disconnected")
        signalled = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        code = await worker.wait(timeout=grace + 30)
        took = time.monotonic() - signalled
        assert code == 0, worker.output[-3000:]
        assert took <= grace, f"took {took:.1f} s, WORKER_SHUTDOWN_GRACE is {grace:g} s"
        assert worker.has_event("worker.stopped")
        # Nothing lost: what was not accepted is back in the queue.
        accepted = len(emulator.state.accepted_counts)
        assert accepted + await queue_depth(amqp, names.queue) >= len(bodies)
        assert "guest:guest" not in worker.output
    finally:
        if worker.process.returncode is None:
            worker.process.kill()
            await worker.wait()


async def _wait_event(worker: Process, event: str, timeout: float = 30) -> None:
    exited = asyncio.ensure_future(worker.process.wait())
    try:
        await wait_for(
            lambda: worker.has_event(event) or exited.done(), timeout=timeout, what=event
        )
    finally:
        exited.cancel()
    assert worker.has_event(event), f"exited before {event}:\n{worker.output[-3000:]}"


async def test_a_heartbeat_applies_to_every_node_that_does_not_set_its_own(names: Names) -> None:
    own = str(URL(AMQP_URL).update_query(heartbeat=30))
    for url, expected in ((AMQP_URL, "7"), (own, "30")):
        connection = await broker.connect(_settings(url, names), "events", heartbeat=7)
        async with connection:
            assert connection.url.query["heartbeat"] == expected
            assert connection.connected.is_set()
