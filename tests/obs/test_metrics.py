"""The metrics as Prometheus scrapes them from a worker process, and the hooks behind them."""

from __future__ import annotations

import math
import signal
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from aio_pika.abc import AbstractChannel
from prometheus_client import REGISTRY

from tests.support.broker import Names, collect, publish
from tests.support.endpoints import REFRESH_TOKEN
from tests.support.events import event
from tests.support.metrics import scrape, value
from tests.support.polling import wait_for
from tests.support.processes import spawn, worker_env
from worker.emulator import Emulator
from worker.obs import labels, metrics
from worker.scx.instrumentation import Instrumentation


async def test_a_worker_process_counts_what_it_forwards_and_dead_letters(
    names: Names, emulator: Emulator, channel: AbstractChannel, unused_tcp_port: int
) -> None:
    port = unused_tcp_port
    emulator.configure(rate_limit=1000, rate_interval=60)
    emulator.inject("ticket", 503, count=1)
    worker = await spawn("run", env=worker_env(names, emulator, METRICS_PORT=str(port)))
    try:
        await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
        before = await scrape(port)
        assert value(before, "scx_forwarder_consumer_up") == 1
        assert value(before, "scx_forwarder_broker_connected") == 1
        assert math.isnan(value(before, "scx_forwarder_rate_limit_remaining"))

        published = datetime.now(UTC) - timedelta(seconds=3)
        bodies = [event(1), event(2), event(3), b"not json", event(4, topic="weather")]
        await publish(channel, names, bodies, timestamp=published)
        await collect(channel, names.dlq, 2)
        await wait_for(lambda: len(emulator.state.accepted) == 3, what="three forwarded")

        async def settled() -> bool:
            seen = await scrape(port)
            return value(seen, "scx_forwarder_publish_to_ack_seconds_count") == 5

        await wait_for(settled, what="five messages settled in the metrics")
        after = await scrape(port)
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0

    assert value(after, "scx_forwarder_tickets_forwarded_total") == 3
    assert value(after, "scx_forwarder_tickets_dead_lettered_total", kind="malformed") == 1
    assert value(after, "scx_forwarder_tickets_dead_lettered_total", kind="invalid") == 1
    assert value(after, "scx_forwarder_tickets_dead_lettered_total", kind="rejected") == 0
    assert value(after, "scx_forwarder_retries_total", reason="http_503") == 1
    requests = "scx_forwarder_api_requests_total"
    assert value(after, requests, route="ticket", status_class="2xx") == 3
    assert value(after, requests, route="ticket", status_class="5xx") == 1
    assert value(after, requests, route="auth", status_class="2xx") == 1
    assert value(after, "scx_forwarder_api_request_duration_seconds_count", route="ticket") == 4
    assert value(after, "scx_forwarder_api_request_duration_seconds_count", route="auth") == 1
    # Published three seconds ago (AMQP timestamps have whole seconds): all in the 5 s bucket.
    assert value(after, "scx_forwarder_publish_to_ack_seconds_bucket", le="2.0") == 0
    assert value(after, "scx_forwarder_publish_to_ack_seconds_bucket", le="5.0") == 5
    assert value(after, "scx_forwarder_messages_in_flight") == 0
    assert 3500 < value(after, "scx_forwarder_token_expires_in_seconds") <= 3600
    # The last answer's header: the calls answer concurrently, so not necessarily the lowest.
    assert 1000 - 4 <= value(after, "scx_forwarder_rate_limit_remaining") < 1000
    assert value(after, "scx_forwarder_event_loop_lag_seconds") >= 0
    assert REFRESH_TOKEN not in str(after)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("HTTP 503", "http_503"),
        ("HTTP 429", "http_429"),
        ("timeout (ReadTimeout)", "timeout"),
        ("connection error (ConnectError: [Errno 111] Connect call failed)", "connection"),
        ("POST /v1/auth answered HTTP 502", "auth_http_502"),
        ("circuit open: the API kept failing, calls held back for 4.2 s", "circuit_open"),
        ("something nobody foresaw", "other"),
    ],
)
def test_reasons_become_a_small_fixed_set_of_labels(text: str, label: str) -> None:
    assert labels.reason_label(text) == label


def test_delayed_counts_by_reason_class() -> None:
    before = sample("scx_forwarder_tickets_delayed_total", reason="http_503")
    metrics.delayed("HTTP 503")
    metrics.delayed("HTTP 503")
    assert sample("scx_forwarder_tickets_delayed_total", reason="http_503") == before + 2


def test_messages_without_a_timestamp_are_not_timed() -> None:
    before = sample("scx_forwarder_publish_to_ack_seconds_count")
    metrics.forwarded(None)
    assert sample("scx_forwarder_publish_to_ack_seconds_count") == before
    naive_utc = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=1)
    metrics.dead_lettered("invalid", naive_utc)
    assert sample("scx_forwarder_publish_to_ack_seconds_count") == before + 1


async def test_http_hooks_record_answers_and_what_they_say_about_the_token(
    emulator: Emulator,
) -> None:
    now = [1000.0]
    seen = Instrumentation(clock=lambda: now[0])
    assert seen.token_status() == (True, "none yet; fetched before the first send")
    refused_before = sample("scx_forwarder_api_requests_total", route="auth", status_class="4xx")
    async with httpx.AsyncClient(base_url=emulator.base_url, event_hooks=seen.hooks()) as client:
        refused = await client.post("/v1/auth", data={"refreshToken": "wrong"})
        assert refused.status_code == 401
        assert seen.token_status() == (
            False,
            "the API refused the refresh token (HTTP 401)",
        )
        emulator.inject("auth", 503)
        await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
        assert seen.token_status() == (False, "the last refresh failed with HTTP 503")
        await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
        assert seen.token_status()[0]
    after = sample("scx_forwarder_api_requests_total", route="auth", status_class="4xx")
    assert after == refused_before + 1
    seen.token_refreshed(60)
    assert seen.token_status() == (True, "held, expires in 60 s")
    assert sample("scx_forwarder_token_expires_in_seconds") == 60
    now[0] += 61
    assert seen.token_status() == (True, "expired while idle; refreshed before the next send")
    assert sample("scx_forwarder_token_expires_in_seconds") == 0
