"""worker.forward.progress: the x-scx-progress header and the Redis record (the machine's Redis)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from tests.support.endpoints import REDIS_URL
from tests.support.proxy import TcpProxy
from worker.core.errors import RetryLater
from worker.core.settings import ConfigError, Settings, load_settings
from worker.forward.identity import MessageIdentity
from worker.forward.progress import RECORD_ATTEMPTS, StateRecord, Steps

FIRST = MessageIdentity("evt-1", "event")
SECOND = MessageIdentity("evt-2", "event")


def test_the_header_says_what_is_done_and_reads_back() -> None:
    steps = Steps()
    assert steps.header() == {}, "nothing done, nothing to carry"
    steps.ticket = True
    steps.add_upload("a.png")
    steps.add_upload("a.png")
    steps.add_upload("b.pdf")
    header = steps.header()
    assert header == {"x-scx-progress": '{"ticket":true,"uploaded":["a.png","b.pdf"]}'}
    assert Steps.from_headers(header) == steps
    as_bytes = {"x-scx-progress": header["x-scx-progress"].encode()}
    assert Steps.from_headers(as_bytes) == steps


def test_the_header_names_its_message_and_another_message_does_not_inherit_it() -> None:
    steps = Steps(message=FIRST.value)
    steps.attempted = True
    header = steps.header()
    assert header == {
        "x-scx-progress": '{"message":"evt-1","ticket":false,"uploaded":[],"attempted":true}'
    }
    again = Steps.from_headers(header)
    again.claim(FIRST)
    assert again.attempted, "a ticket call of evt-1 went out: a later 409 may be its own"
    other = Steps.from_headers(header)
    other.claim(SECOND)
    assert not other, "the steps of evt-1 are not those of evt-2"
    assert other.message == "evt-2"


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"ticket": "yes", "uploaded": []}',
        '{"ticket": true, "uploaded": "a.png"}',
        '{"ticket": true, "uploaded": [1]}',
        7,
    ],
)
def test_a_header_that_does_not_parse_means_do_everything(raw: object) -> None:
    assert not Steps.from_headers({"x-scx-progress": raw})


def test_uploads_without_a_ticket_are_not_believed() -> None:
    steps = Steps.from_headers({"x-scx-progress": '{"ticket": false, "uploaded": ["a.png"]}'})
    assert steps == Steps()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def record_settings(url: str, prefix: str, ttl: int = 3600) -> Settings:
    return Settings(
        worker_state_redis_url=url, worker_state_key_prefix=prefix, worker_state_ttl=ttl
    )


async def test_the_record_keeps_each_step_per_seller_ticket_and_message_with_a_ttl(
    redis: Redis, redis_prefix: str
) -> None:
    record = StateRecord(record_settings(REDIS_URL, redis_prefix, ttl=600))
    try:
        assert await record.recall("4711", "CASE:1", FIRST) == (False, [])
        await record.ticket_created("4711", "CASE:1", FIRST)
        await record.file_uploaded("4711", "CASE:1", FIRST, "a.png")
        await record.file_uploaded("4711", "CASE:1", FIRST, "b.pdf")
        assert await record.recall("4711", "CASE:1", FIRST) == (True, ["a.png", "b.pdf"])
        assert await record.recall("4712", "CASE:1", FIRST) == (False, []), "per seller"
        assert await record.recall("4711", "CASE:1", SECOND) == (False, []), (
            "another message of the same conversation has done nothing yet"
        )
        key = f"{redis_prefix}:4711:CASE:1"
        assert 0 < await redis.ttl(key) <= 600
        fields = await redis.hgetall(key)
        assert fields[f"{FIRST.record_tag}:id".encode()] == b"evt-1", "readable by operators"
    finally:
        await record.aclose()


async def test_redis_that_does_not_answer_is_a_transient_failure_never_a_guess(
    redis_prefix: str,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    record = StateRecord(record_settings(f"redis://127.0.0.1:{port}/0", redis_prefix), sleep=sleep)
    started = time.monotonic()
    try:
        with pytest.raises(RetryLater) as raised:
            await record.recall("4711", "CASE-1", FIRST)
        with pytest.raises(RetryLater):
            await record.ticket_created("4711", "CASE-1", FIRST)
    finally:
        await record.aclose()
    assert "progress record (Redis) unavailable" in raised.value.reason
    assert raised.value.attempts == 0
    assert len(waits) == 2 * (RECORD_ATTEMPTS - 1)
    assert time.monotonic() - started < 10


async def test_the_record_works_again_once_redis_is_back(redis: Redis, redis_prefix: str) -> None:
    proxy = await TcpProxy("127.0.0.1", 6379).start()

    async def no_wait(_: float) -> None:
        return None

    record = StateRecord(record_settings(f"redis://{proxy.address}/0", redis_prefix), sleep=no_wait)
    try:
        await record.ticket_created("4711", "CASE-2", FIRST)
        await proxy.cut()
        with pytest.raises(RetryLater):
            await record.recall("4711", "CASE-2", FIRST)
        await proxy.restore()
        assert await record.recall("4711", "CASE-2", FIRST) == (True, [])
    finally:
        await record.aclose()
        await proxy.cut()


def test_the_redis_url_is_checked_and_never_logged_with_its_password() -> None:
    settings = load_settings(worker_state_redis_url="redis://:s3cret@redis:6379/0")
    assert settings.state_redis_url_redacted == "redis://:***@redis:6379/0"
    assert load_settings(worker_state_redis_url="").worker_state_redis_url is None
    assert Settings().state_redis_url_redacted is None
    with pytest.raises(ConfigError) as raised:
        load_settings(worker_state_redis_url="http://:s3cret@redis:6379/0")
    assert "WORKER_STATE_REDIS_URL" in str(raised.value)
    assert "s3cret" not in str(raised.value)
