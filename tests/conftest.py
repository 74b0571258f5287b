"""Fixtures for tests against the real broker and the emulator over real sockets.

Every test gets its own exchange and queues (``names``) and deletes them afterwards. The
helpers these fixtures use, and the tests import, live in ``tests/support/``.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from tests.support.bridge import Tap, unrouted_queue
from tests.support.broker import Names, rabbitmqctl
from tests.support.endpoints import AMQP_URL, REDIS_URL, REFRESH_TOKEN
from tests.support.forwarder import Running, StartWorker
from tests.support.outcomes import OUTCOME_KEYS
from tests.support.processes import Process
from tests.support.settings import make_settings
from worker.emulator import Emulator, EmulatorConfig
from worker.forward.consumer import Forwarder
from worker.forward.mapping import Mapper
from worker.scx import ScxClient

# Generation speed depends on how busy the machine is; correctness does not.
hypothesis_settings.register_profile(
    "forwarder", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("forwarder")


# The fixtures that open sockets in the test process (the pure tests skip the collection,
# about 50 ms each).
_SOCKET_FIXTURES = frozenset({"amqp", "channel", "emulator", "start_worker"})


@pytest.fixture(autouse=True)
def _collect_garbage(request: pytest.FixtureRequest) -> Iterator[None]:
    """A socket or connection a test leaves open is reported in that test.

    Left to the collector, its ``ResourceWarning`` surfaces in whichever later test the
    collector happens to run in, and fails that one: a flaky test that points nowhere.
    """
    yield
    if _SOCKET_FIXTURES.intersection(request.fixturenames):
        gc.collect()


@pytest.fixture
def names() -> Names:
    suffix = uuid.uuid4().hex[:12]
    return Names(exchange=f"test.marketplace.{suffix}", queue=f"test.scx.{suffix}")


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A Redis key prefix of this test's own; its keys are deleted afterwards."""
    from redis.asyncio import Redis  # imported only by the tests that use Redis

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    redis = Redis.from_url(REDIS_URL)
    keys = [key async for key in redis.scan_iter(f"{name}:*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


@pytest.fixture
async def amqp() -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(AMQP_URL)
    async with connection:
        yield connection


@pytest.fixture
async def channel(amqp: AbstractRobustConnection, names: Names) -> AsyncIterator[AbstractChannel]:
    channel = await amqp.channel()
    yield channel
    for queue in names.all_queues:
        await channel.queue_delete(queue)
    await channel.exchange_delete(names.exchange)
    await channel.close()


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(refresh_token=REFRESH_TOKEN)) as emu:
        yield emu


@pytest.fixture
async def start_worker(
    names: Names, emulator: Emulator, channel: AbstractChannel
) -> AsyncIterator[StartWorker]:
    """Start in-process forwarders (real broker, real HTTP); all are stopped at teardown."""
    running: list[Running] = []

    async def start(*, mapper: Mapper | None = None, **overrides: Any) -> Running:
        settings = make_settings(names, emulator, **overrides)
        client = ScxClient(settings, SecretStr(REFRESH_TOKEN))
        forwarder = Forwarder(settings, client, mapper=mapper)
        task = asyncio.create_task(forwarder.run())
        started = Running(forwarder, client, task)
        running.append(started)
        consuming = asyncio.create_task(forwarder.consuming.wait())
        done, _ = await asyncio.wait({task, consuming}, timeout=20, return_when="FIRST_COMPLETED")
        if consuming not in done:
            consuming.cancel()
            if task.done():
                task.result()  # raise the start-up error
            pytest.fail("worker did not start consuming")
        return started

    yield start
    for worker in running:
        try:
            if not worker.task.done():
                assert await worker.stop() == 0
        finally:
            await worker.client.aclose()


@pytest.fixture
async def broker_user() -> AsyncIterator[tuple[str, str]]:
    """A broker login of its own, so a test can look for its password in what it prints."""
    user, password = f"fwd-{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
    await rabbitmqctl("add_user", user, password)
    try:
        await rabbitmqctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield user, password
    finally:
        await rabbitmqctl("delete_user", user)


@pytest.fixture
async def processes() -> AsyncIterator[list[Process]]:
    started: list[Process] = []
    yield started
    for proc in started:
        if proc.process.returncode is None:
            proc.process.kill()
            await proc.wait()


@pytest.fixture
async def outcome_queue(
    amqp: AbstractRobustConnection, channel: AbstractChannel, names: Names
) -> AsyncIterator[str]:
    """A queue bound for both outcome types, as the marketplace would bind one."""
    name = f"{names.queue}.outcomes"
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(name, durable=True)
    for key in OUTCOME_KEYS:
        await queue.bind(exchange, routing_key=key)
    yield name
    cleanup = await amqp.channel()
    await cleanup.queue_delete(name)
    await cleanup.close()


@pytest.fixture
async def taps(amqp: AbstractRobustConnection, names: Names) -> AsyncIterator[Any]:
    """``taps(suffix, *keys, arguments=None)``: a queue bound with those keys; all deleted."""
    channel = await amqp.channel()
    made: list[str] = [unrouted_queue(names)]
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )

    async def make(suffix: str, *keys: str, arguments: dict[str, Any] | None = None) -> Tap:
        name = f"{names.queue}.{suffix}"
        made.append(name)
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        for key in keys:
            await queue.bind(exchange, routing_key=key)
        return Tap(channel, name)

    yield make
    for name in made:
        await channel.queue_delete(name)
    await channel.exchange_delete(names.exchange)
    await channel.close()
