"""The metrics the alert rules (deploy/prometheus/alerts.yaml) are built on, scraped from a real
worker process: queue depths from passive declares, 429s, the circuit breaker's state; and the
events bridge's metric functions as the bridge will call them."""

from __future__ import annotations

import math
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from prometheus_client import REGISTRY

from tests.support.broker import Names, publish
from tests.support.endpoints import AMQP_URL
from tests.support.events import event
from tests.support.metrics import Samples, scrape, value
from tests.support.polling import wait_for
from tests.support.processes import spawn, worker_env
from worker.core.settings import load_settings
from worker.emulator import Emulator
from worker.forward import queue_stats
from worker.obs import metrics
from worker.obs.labels import MAX_EVENT_TYPES, event_type_label
from worker.scx.breaker import Breaker
from worker.scx.waits import Waits


async def test_a_worker_exports_queue_depths_429s_and_the_breaker_state(
    names: Names,
    emulator: Emulator,
    channel: AbstractChannel,
    unused_tcp_port: int,
    tmp_path: Path,
) -> None:
    port = unused_tcp_port
    url_file = tmp_path / "amqp-url"
    url_file.write_text(AMQP_URL + "\n")
    env = worker_env(
        names,
        emulator,
        METRICS_PORT=str(port),
        METRICS_QUEUE_INTERVAL="1",
        AMQP_URL_FILE=str(url_file),  # the broker URL from a file, as the Kubernetes Secret
        SCX_BREAKER_FAILURES="1",
        SCX_BREAKER_COOLDOWN="60",
        SCX_RETRY_BUDGET="60",
        SCX_RETRY_INITIAL_WAIT="0.01",
        WORKER_RETRY_DELAYS="600",
    )
    del env["AMQP_URL"]
    worker = await spawn("run", env=env)
    latest: Samples = {}

    async def scraped(name: str, expected: float, **labels: str) -> bool:
        latest.update(await scrape(port))
        return value(latest, name, **labels) == expected

    depth = "scx_forwarder_queue_messages"
    consumers = "scx_forwarder_queue_consumers"
    try:
        await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
        await wait_for(
            lambda: scraped(consumers, 1, queue=names.queue, role="work"),
            what="the work queue's consumer in the metrics",
        )
        assert value(latest, depth, queue=names.dlq, role="dlq") == 0
        assert value(latest, depth, queue=names.retry(600), role="retry") == 0
        assert value(latest, "scx_forwarder_circuit_state", state="closed") == 1
        assert value(latest, "scx_forwarder_circuit_state", state="open") == 0

        await publish(channel, names, [b"not json", b"[1]"])
        await wait_for(
            lambda: scraped(depth, 2, queue=names.dlq, role="dlq"),
            what="the DLQ's depth of 2 in the metrics",
        )

        emulator.inject("ticket", 429, count=1, retry_after=0)
        await publish(channel, names, [event(1)])
        await wait_for(lambda: len(emulator.state.accepted) == 1, what="forwarded after a 429")
        await wait_for(lambda: scraped("scx_forwarder_api_rate_limited_total", 1, route="ticket"))
        assert value(latest, "scx_forwarder_circuit_opened_total") == 0, "429s do not open it"

        emulator.inject("ticket", 503, count=1)
        await publish(channel, names, [event(2)])
        await wait_for(
            lambda: scraped("scx_forwarder_circuit_state", 1, state="open"),
            what="the open breaker in the metrics",
        )
        assert value(latest, "scx_forwarder_circuit_state", state="closed") == 0
        assert value(latest, "scx_forwarder_circuit_opened_total") == 1
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0


async def test_a_missing_queue_reads_as_unknown_and_the_others_still_count(
    names: Names, amqp: AbstractRobustConnection, channel: AbstractChannel
) -> None:
    dlq = await channel.declare_queue(names.dlq, durable=True)
    for body in (b"a", b"b", b"c"):
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=names.dlq)
    missing = names.retry(600)
    queues = {missing: "retry", names.dlq: "dlq"}

    async def polled(expected: float) -> bool:
        await queue_stats.poll_once(queues, amqp)
        return sample("scx_forwarder_queue_messages", queue=names.dlq, role="dlq") == expected

    await wait_for(lambda: polled(3), what="the DLQ's depth of 3")
    assert math.isnan(sample("scx_forwarder_queue_messages", queue=missing, role="retry"))
    assert sample("scx_forwarder_queue_consumers", queue=names.dlq, role="dlq") == 0
    await dlq.purge()
    await wait_for(lambda: polled(0), what="the purged DLQ's depth of 0")


async def test_without_a_connection_every_depth_is_unknown(names: Names) -> None:
    settings = load_settings(amqp_queue=names.queue, worker_retry_delays="10,60")
    queues = queue_stats.worker_queues(settings)
    assert queues == {
        names.queue: "work",
        names.dlq: "dlq",
        names.retry(10): "retry",
        names.retry(60): "retry",
    }
    await queue_stats.poll_once(queues, None)
    for name, role in queues.items():
        assert math.isnan(sample("scx_forwarder_queue_messages", queue=name, role=role))


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_events_bridge_metrics_are_labelled_by_lock_and_bounded_by_type() -> None:
    lock = "test.events.lock"
    reply = "Seller:Ticket.Reply"
    before = sample("scx_forwarder_events_published_total", type=reply)
    metrics.events_poller_active(lock, True)
    metrics.events_poll_succeeded(lock)
    metrics.event_polled(reply)
    metrics.event_published(reply, datetime.now(UTC) - timedelta(seconds=3))
    metrics.events_acknowledged([reply, reply])
    metrics.event_unrouted("Seller:Order.Shipping", "unroutable")
    metrics.event_unrouted(None, "unmappable")
    metrics.events_poll_failed("HTTP 503 from GET /v1/channel/event")
    metrics.event_without_id()

    assert sample("scx_forwarder_events_poller_active", lock=lock) == 1
    polled_at = sample("scx_forwarder_events_last_poll_success_timestamp_seconds", lock=lock)
    assert abs(polled_at - datetime.now(UTC).timestamp()) < 60
    assert sample("scx_forwarder_events_published_total", type=reply) == before + 1
    assert sample("scx_forwarder_events_acknowledged_total", type=reply) >= 2
    assert sample(
        "scx_forwarder_events_unrouted_total", type="Seller:Order.Shipping", reason="unroutable"
    )
    assert sample("scx_forwarder_events_unrouted_total", type="invalid", reason="unmappable")
    assert sample("scx_forwarder_events_poll_errors_total", reason="http_503")
    assert sample("scx_forwarder_events_publish_delay_seconds_bucket", type=reply, le="5.0")
    # Types from outside cannot grow the label set without bound.
    assert event_type_label("no type at all") == "invalid"
    assert event_type_label(42) == "invalid"
    labels = {event_type_label(f"Seller:Made.Up{i}") for i in range(200)}
    assert "other" in labels
    assert len(labels) <= MAX_EVENT_TYPES + 1


async def test_every_breaker_transition_shows_in_the_state_gauge() -> None:
    now = [0.0]
    breaker = Breaker(failures=2, cooldown=5, max_cooldown=60, waits=Waits(), clock=lambda: now[0])

    def state() -> dict[str, float]:
        return {s: sample("scx_forwarder_circuit_state", state=s) for s in metrics.CIRCUIT_STATES}

    opened = sample("scx_forwarder_circuit_opened_total")
    assert state() == {"closed": 1, "open": 0, "half-open": 0}
    breaker.failed(probe=await breaker.admit(deadline=1))
    assert state()["closed"] == 1, "one failure of two"
    breaker.failed(probe=await breaker.admit(deadline=1))
    assert state() == {"closed": 0, "open": 1, "half-open": 0}
    now[0] = 6.0
    probe = await breaker.admit(deadline=7)
    assert probe
    assert state() == {"closed": 0, "open": 0, "half-open": 1}
    breaker.failed(probe=probe)
    assert state() == {"closed": 0, "open": 1, "half-open": 0}
    assert sample("scx_forwarder_circuit_opened_total") == opened + 2
    now[0] = 20.0
    probe = await breaker.admit(deadline=21)
    breaker.succeeded(probe=probe)
    assert state() == {"closed": 1, "open": 0, "half-open": 0}
