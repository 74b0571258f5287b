"""Fixtures for tests against the real broker and the emulator over real sockets.

Every test gets its own exchange and queues (``names``) and deletes them afterwards.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from pydantic import SecretStr

from worker.core.settings import Settings
from worker.emulator import Emulator, EmulatorConfig
from worker.forward.consumer import Forwarder
from worker.forward.mapping import Mapper
from worker.scx import ScxClient

# Generation speed depends on how busy the machine is; correctness does not.
hypothesis_settings.register_profile(
    "forwarder", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("forwarder")

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# The machine's Redis, for the progress record's tests: each keeps to a prefix of its own.
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REFRESH_TOKEN = "test-refresh-token-s3cr3t"
# Delay-stage delays the tests use (short, to scale time with settings); the production
# defaults are listed too because process-level tests run with them. Fixtures delete the
# delay queues of both.
TEST_RETRY_DELAYS = (0.3, 1.0)
_ALL_RETRY_DELAYS = (*TEST_RETRY_DELAYS, 10.0, 60.0, 600.0)


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout: float = 20.0, what: str = ""
) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Names:
    exchange: str
    queue: str
    binding_key: str = "ticket.created"

    @property
    def dlq(self) -> str:
        return f"{self.queue}.dlq"

    def retry(self, delay: float) -> str:
        return f"{self.queue}.retry.{delay:g}s"

    @property
    def all_queues(self) -> list[str]:
        return [self.queue, self.dlq, *(self.retry(delay) for delay in _ALL_RETRY_DELAYS)]


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


def make_settings(names: Names, emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": AMQP_URL,
        "amqp_exchange": names.exchange,
        "amqp_queue": names.queue,
        "amqp_binding_key": names.binding_key,
        "scx_api_url": emulator.base_url,
        "scx_refresh_token": REFRESH_TOKEN,
        "scx_max_requests_per_minute": 0,
        "scx_retry_initial_wait": 0.01,
        "scx_retry_max_wait": 0.2,
        "scx_retry_budget": 10.0,
        "worker_retry_delays": TEST_RETRY_DELAYS,
        "worker_shutdown_grace": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Running:
    forwarder: Forwarder
    client: ScxClient
    task: asyncio.Task[int]

    async def stop(self) -> int:
        self.forwarder.stop()
        return await asyncio.wait_for(self.task, 30)


StartWorker = Callable[..., Awaitable[Running]]


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


async def publish(
    channel: AbstractChannel,
    names: Names,
    bodies: Iterable[bytes],
    **properties: Any,
) -> list[str]:
    """Publish bodies to the test exchange with confirms; returns their message ids."""
    exchange = await channel.declare_exchange(
        names.exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    ids = []
    for body in bodies:
        message_id = properties.pop("message_id", None) or uuid.uuid4().hex
        ids.append(message_id)
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, **properties),
            routing_key=names.binding_key,
            mandatory=True,
        )
    return ids


async def queue_depth(amqp: AbstractRobustConnection, queue: str) -> int:
    """Messages ready in ``queue``, counted by taking them and handing them back.

    The ``message_count`` of a passive declare lags behind on quorum queues (seen on
    RabbitMQ 3.10: stuck one short for seconds), so assertions count for real.
    """
    counting = await amqp.channel()
    try:
        declared = await counting.declare_queue(queue, passive=True)
        count = 0
        while await declared.get(no_ack=False, fail=False) is not None:
            count += 1
        return count
    finally:
        await counting.close()  # the unacked messages go back to the queue


# How long ``collect`` keeps looking after the expected count arrived.
QUIET_PERIOD = 0.3


async def collect(
    channel: AbstractChannel, queue: str, n: int, *, timeout: float = 20.0
) -> list[AbstractIncomingMessage]:
    """Take messages off ``queue`` until there are ``n``, then check that no more arrive."""
    declared = await channel.declare_queue(queue, passive=True)
    messages: list[AbstractIncomingMessage] = []

    async def take() -> bool:
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            await message.ack()
            messages.append(message)
        return len(messages) >= n

    await wait_for(take, timeout=timeout, what=f"{n} messages in {queue}")
    # A duplicate may arrive just after the n-th message: keep taking for a quiet period,
    # so that "exactly n" is asserted on what arrived, not on how fast we looked.
    quiet_until = time.monotonic() + QUIET_PERIOD
    while time.monotonic() < quiet_until:
        await take()
        await asyncio.sleep(0.02)
    assert len(messages) == n, f"expected {n} messages in {queue}, got {len(messages)}"
    return messages


@asynccontextmanager
async def no_leftovers(amqp: AbstractRobustConnection, names: Names) -> AsyncIterator[None]:
    """Assert at exit that the work queue holds nothing ready (nothing left or requeued)."""
    yield
    assert await queue_depth(amqp, names.queue) == 0


async def close_broker_connections(name_prefix: str) -> int:
    """Have the broker close the connections whose client-given name starts with a prefix."""
    listing = await rabbitmqctl(
        "list_connections", "--no-table-headers", "pid", "client_properties"
    )
    pids = [
        line.split("\t", 1)[0]
        for line in listing.splitlines()
        if f'"connection_name","{name_prefix}' in line.replace("<<", "").replace(">>", "")
    ]
    for pid in pids:
        await rabbitmqctl("close_connection", pid, "test: simulated broker restart")
    return len(pids)


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


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, args
    return out.decode()


def modules_loaded(code: str, prefix: str) -> list[str]:
    """The modules starting with ``prefix`` that a fresh interpreter holds after ``code``: what
    a worker process would carry (an import in this process cannot be taken back)."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in sys.modules if m.startswith({prefix!r})))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded: list[str] = ast.literal_eval(done.stdout.strip())
    return loaded
