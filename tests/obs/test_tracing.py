"""OpenTelemetry traces: spans through the real broker and the emulator, read back from the
SDK's in-memory exporter, and the ``traceparent`` headers the emulator received."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
import orjson
import pytest
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.support.broker import Names, collect, publish
from tests.support.events import event
from tests.support.forwarder import StartWorker
from tests.support.imports import modules_loaded
from tests.support.polling import wait_for
from tests.support.processes import Process, worker_env
from worker.emulator import Emulator
from worker.obs import tracing
from worker.obs.logging import add_trace_ids, configure_logging

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, every finished span kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    yield exporter
    tracing.install(None)
    provider.shutdown()


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def hex_span(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.span_id:016x}"


def parent_of(span: ReadableSpan) -> str | None:
    return f"{span.parent.span_id:016x}" if span.parent is not None else None


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def traceparent_ids(value: object) -> tuple[str, str]:
    """(trace id, parent span id) of a traceparent header value."""
    if isinstance(value, bytes):
        value = value.decode()
    assert isinstance(value, str), value
    match = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", value)
    assert match, value
    return match.group(1), match.group(2)


async def consumer_spans(
    exporter: InMemorySpanExporter, names: Names, n: int = 1
) -> list[ReadableSpan]:
    """The consumer spans once ``n`` deliveries have ended (the span ends after the ack)."""
    name = f"process {names.queue}"
    await wait_for(lambda: len(named(exporter, name)) >= n, what=f"{n} consumer spans")
    return named(exporter, name)


@pytest.mark.parametrize("header_type", [str, bytearray])
async def test_a_message_with_a_traceparent_continues_its_trace_to_the_api(
    spans: InMemorySpanExporter,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
    header_type: type,
) -> None:
    await start_worker()
    headers: dict[str, Any] = {
        # A publisher may send them as AMQP byte arrays: they arrive as bytearray.
        "traceparent": bytearray(TRACEPARENT.encode()) if header_type is bytearray else TRACEPARENT,
        "tracestate": bytearray(b"vendor=abc") if header_type is bytearray else "vendor=abc",
    }
    [message_id] = await publish(channel, names, [event(1, ticket_id="T-1-x")], headers=headers)

    [consumer] = await consumer_spans(spans, names)
    assert consumer.kind == SpanKind.CONSUMER
    assert (hex_trace(consumer), parent_of(consumer)) == (TRACE_ID, PARENT_ID)
    assert consumer.context is not None
    assert consumer.context.trace_state.get("vendor") == "abc"
    attributes = dict(consumer.attributes or {})
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.destination.name"] == names.exchange
    assert attributes["messaging.destination.subscription.name"] == names.queue
    assert attributes["messaging.rabbitmq.destination.routing_key"] == names.binding_key
    assert attributes["messaging.message.id"] == message_id
    assert attributes["scx.outcome"] == "forwarded"
    assert attributes["scx.ticket_id"] == "T-1-x"
    assert consumer.status.status_code == StatusCode.UNSET

    # The token call and the ticket call are client spans under the consumer span, and each
    # request carried its own span's context on the wire.
    [auth] = named(spans, "POST /v1/auth")
    [ticket] = named(spans, "POST /v1/channel/ticket")
    for client, route in ((auth, "auth"), (ticket, "ticket")):
        assert client.kind == SpanKind.CLIENT
        assert hex_trace(client) == TRACE_ID
        assert parent_of(client) == hex_span(consumer)
        seen = emulator.state.headers_by_route[route]
        assert traceparent_ids(seen["traceparent"]) == (TRACE_ID, hex_span(client))
        assert seen["tracestate"] == "vendor=abc"
    assert dict(ticket.attributes or {})["http.response.status_code"] == 201
    assert dict(ticket.attributes or {})["url.full"] == emulator.base_url + "/v1/channel/ticket"


async def test_a_message_without_a_traceparent_starts_a_trace(
    spans: InMemorySpanExporter,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    await publish(channel, names, [event(1)])
    [consumer] = await consumer_spans(spans, names)
    assert consumer.parent is None
    [ticket] = named(spans, "POST /v1/channel/ticket")
    assert (hex_trace(ticket), parent_of(ticket)) == (hex_trace(consumer), hex_span(consumer))
    seen = emulator.state.headers_by_route["ticket"]
    assert traceparent_ids(seen["traceparent"]) == (hex_trace(consumer), hex_span(ticket))


async def test_each_attempt_is_a_client_span_and_the_retry_an_event(
    spans: InMemorySpanExporter,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
) -> None:
    emulator.inject("ticket", 503, count=2)
    await start_worker()
    await publish(channel, names, [event(1)], headers={"traceparent": TRACEPARENT})
    [consumer] = await consumer_spans(spans, names)
    attempts = named(spans, "POST /v1/channel/ticket")
    statuses = [dict(span.attributes or {})["http.response.status_code"] for span in attempts]
    assert statuses == [503, 503, 201]
    assert [span.status.status_code for span in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert {parent_of(span) for span in attempts} == {hex_span(consumer)}
    retries = [e for e in consumer.events if e.name == "scx.retry"]
    assert [dict(e.attributes or {})["attempt"] for e in retries] == [1, 2]
    assert dict(consumer.attributes or {})["scx.attempts"] == 3


async def test_a_dead_letter_copy_carries_the_trace_of_the_span_that_made_it(
    spans: InMemorySpanExporter,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
) -> None:
    await start_worker()
    await publish(channel, names, [b"not json"], headers={"traceparent": TRACEPARENT})
    [copy] = await collect(channel, names.dlq, 1)
    [consumer] = await consumer_spans(spans, names)
    [send] = named(spans, f"send {names.dlq}")
    assert send.kind == SpanKind.PRODUCER
    assert parent_of(send) == hex_span(consumer)
    assert dict(send.attributes or {})["messaging.rabbitmq.destination.routing_key"] == names.dlq
    assert traceparent_ids((copy.headers or {})["traceparent"]) == (TRACE_ID, hex_span(send))
    assert (copy.headers or {})["x-error-kind"] == "malformed"
    attributes = dict(consumer.attributes or {})
    assert (attributes["scx.outcome"], attributes["scx.error_kind"]) == (
        "dead_lettered",
        "malformed",
    )
    assert consumer.status.status_code == StatusCode.ERROR


async def test_an_outcome_event_continues_the_trace_of_its_ticket(
    spans: InMemorySpanExporter,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
    outcome_queue: str,
) -> None:
    await start_worker(worker_outcome_events=True)
    await publish(channel, names, [event(1)], headers={"traceparent": TRACEPARENT})
    [outcome] = await collect(channel, outcome_queue, 1)
    [consumer] = await consumer_spans(spans, names)
    [send] = named(spans, f"send {names.exchange}")
    assert send.kind == SpanKind.PRODUCER
    assert parent_of(send) == hex_span(consumer)
    assert traceparent_ids((outcome.headers or {})["traceparent"]) == (TRACE_ID, hex_span(send))


async def test_a_delayed_message_comes_back_in_the_same_trace(
    spans: InMemorySpanExporter,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
) -> None:
    # No traceparent from the publisher: the trace the worker starts survives the delay.
    emulator.inject("ticket", 503)
    await start_worker(scx_retry_attempts=1)
    await publish(channel, names, [event(1)])
    first, second = sorted(
        await consumer_spans(spans, names, 2), key=lambda span: span.start_time or 0
    )
    [send] = named(spans, f"send {names.retry(0.3)}")
    assert dict(first.attributes or {})["scx.outcome"] == "delayed"
    assert dict(second.attributes or {})["scx.outcome"] == "forwarded"
    assert first.parent is None
    assert parent_of(send) == hex_span(first)
    assert (hex_trace(second), parent_of(second)) == (hex_trace(first), hex_span(send))


async def test_log_lines_carry_the_trace_and_span_id(
    spans: InMemorySpanExporter,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
) -> None:
    with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
        await start_worker()
        await publish(channel, names, [event(1)], headers={"traceparent": TRACEPARENT})
        [consumer] = await consumer_spans(spans, names)
    [line] = [entry for entry in logs if entry["event"] == "ticket.forwarded"]
    assert (line["trace_id"], line["span_id"]) == (TRACE_ID, hex_span(consumer))
    [started] = [entry for entry in logs if entry["event"] == "worker.consuming"]
    assert "trace_id" not in started  # outside any span


@dataclass
class _Delivery:
    """What ``tracing.consuming`` reads of an aio-pika message."""

    headers: dict[str, Any]
    exchange: str = "marketplace"
    routing_key: str = "ticket.created"
    delivery_tag: int = 1
    message_id: str = "m-1"
    correlation_id: str | None = None
    body: bytes = b"{}"


@pytest.mark.parametrize(
    ("headers", "continued"),
    [
        ({"traceparent": TRACEPARENT}, True),
        ({"traceparent": TRACEPARENT.encode()}, True),  # a long string that arrived as bytes
        ({"Traceparent": TRACEPARENT}, True),
        ({"TRACEPARENT": bytearray(TRACEPARENT.encode())}, True),
        ({"traceparent": "00-not-a-trace-01"}, False),
        ({"traceparent": 42}, False),
        ({}, False),
    ],
)
def test_which_headers_continue_a_trace(
    spans: InMemorySpanExporter, headers: dict[str, Any], continued: bool
) -> None:
    with tracing.consuming("q", cast(AbstractIncomingMessage, _Delivery(headers))):
        pass
    [span] = spans.get_finished_spans()
    assert (hex_trace(span) == TRACE_ID) is continued
    assert (parent_of(span) == PARENT_ID) is continued


@pytest.mark.usefixtures("restore_logging")
def test_json_log_lines_of_structlog_and_stdlib_carry_the_ids(
    spans: InMemorySpanExporter, capfd: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", "json")
    with tracing.new_trace("some work"):
        structlog.get_logger("worker.test").info("inside")
        logging.getLogger("aio_pika.robust_connection").warning("inside too")
    structlog.get_logger("worker.test").info("outside")
    [span] = spans.get_finished_spans()
    inside, inside_too, outside = log_lines(capfd.readouterr().out)
    for line in (inside, inside_too):
        assert (line["trace_id"], line["span_id"]) == (hex_trace(span), hex_span(span))
    assert "trace_id" not in outside


async def test_off_nothing_is_traced_and_headers_pass_through(
    spans: InMemorySpanExporter,
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
) -> None:
    """As without the extra or with ``OTEL_TRACES_EXPORTER`` unset: no span, no header."""
    tracing.install(None)
    with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
        await start_worker()
        await publish(channel, names, [event(1)], headers={"traceparent": TRACEPARENT})
        await publish(channel, names, [b"not json"], headers={"traceparent": TRACEPARENT})
        [copy] = await collect(channel, names.dlq, 1)
        await wait_for(lambda: emulator.state.accepted_total == 1, what="the ticket forwarded")
    assert spans.get_finished_spans() == ()
    assert "traceparent" not in emulator.state.headers_by_route["ticket"]
    assert "traceparent" not in emulator.state.headers_by_route["auth"]
    # The copy keeps the publisher's context as it came.
    assert (copy.headers or {})["traceparent"] == TRACEPARENT
    assert logs
    assert not any("trace_id" in entry for entry in logs)
    # And no span objects are made on the way: the hooks hand back shared no-ops.
    transport = httpx.AsyncHTTPTransport()
    assert tracing.traced_transport(transport) is transport
    message = cast(AbstractIncomingMessage, object())
    assert tracing.consuming("q", message) is tracing.consuming("q", message)
    assert tracing.current_ids() is None


def test_an_unknown_exporter_is_a_configuration_error() -> None:
    from worker.core.settings import ConfigError

    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: no span exporter 'nosuch'"):
        tracing.configure("nosuch", None)
    assert not tracing.enabled()
    assert tracing.configure("none", None) is False


def test_otlp_means_http_protobuf_unless_the_protocol_says_grpc(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from worker.obs import _otel

    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", raising=False)
    assert _otel._exporter("otlp") is OTLPSpanExporter
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    with pytest.raises(_otel.ExporterMissing, match="otlp_proto_grpc"):
        _otel._exporter("otlp")


def test_the_service_name_defaults_to_scx_forwarder(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.obs import _otel

    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = _otel.provider_from_env(["console"], None)
    assert provider.resource.attributes["service.name"] == "scx-forwarder"
    provider.shutdown()
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes")
    provider = _otel.provider_from_env([], None)
    assert provider.resource.attributes["service.name"] == "from-attributes"
    provider = _otel.provider_from_env([], "billing-forwarder")
    assert provider.resource.attributes["service.name"] == "billing-forwarder"


# --- the command as operators run it ---------------------------------------------------


def console_spans(output: str) -> list[dict[str, Any]]:
    """The span objects the console exporter printed between the JSON log lines."""
    found: list[dict[str, Any]] = []
    block: list[str] = []
    for line in output.splitlines():
        if block or line == "{":
            block.append(line)
            if line == "}":
                found.append(orjson.loads("\n".join(block)))
                block = []
    return found


def log_lines(output: str) -> list[MutableMapping[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines() if line.startswith('{"')]


async def run_until_forwarded(
    processes: list[Process],
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    argv: Sequence[str],
    **env: str,
) -> Process:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=worker_env(names, emulator, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    worker = Process(process)
    processes.append(worker)
    await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
    await publish(channel, names, [event(1)], headers={"traceparent": TRACEPARENT})
    await wait_for(lambda: worker.has_event("ticket.forwarded"), what="the ticket forwarded")
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0, worker.output
    return worker


async def test_the_worker_prints_its_spans_with_the_console_exporter(
    processes: list[Process], emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    worker = await run_until_forwarded(
        processes,
        emulator,
        channel,
        names,
        [sys.executable, "-m", "worker", "run"],
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="forwarder-under-test",
    )
    printed = {span["name"]: span for span in console_spans(worker.output)}
    consumer = printed[f"process {names.queue}"]
    assert consumer["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert consumer["parent_id"] == f"0x{PARENT_ID}"
    assert consumer["resource"]["attributes"]["service.name"] == "forwarder-under-test"
    ticket = printed["POST /v1/channel/ticket"]
    assert ticket["parent_id"] == consumer["context"]["span_id"]
    [forwarded] = [line for line in log_lines(worker.output) if line["event"] == "ticket.forwarded"]
    assert forwarded["trace_id"] == TRACE_ID
    assert f"0x{forwarded['span_id']}" == consumer["context"]["span_id"]


async def test_without_the_extra_the_worker_runs_untraced_and_says_so(
    processes: list[Process], emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    # `import opentelemetry...` fails in this process, as when the extra is not installed.
    hide_otel = (
        "import sys; sys.modules['opentelemetry'] = None; "
        "from worker.cli import main; sys.exit(main(['run']))"
    )
    worker = await run_until_forwarded(
        processes,
        emulator,
        channel,
        names,
        [sys.executable, "-c", hide_otel],
        OTEL_TRACES_EXPORTER="console",
    )
    assert worker.has_event("tracing.unavailable")
    assert console_spans(worker.output) == []
    assert not any("trace_id" in line for line in log_lines(worker.output))
    assert "traceparent" not in emulator.state.headers_by_route["ticket"]


def test_copy_headers_are_what_the_message_had(spans: InMemorySpanExporter) -> None:
    """``publishing`` replaces the trace fields only; everything else stays."""
    headers: dict[str, Any] = {
        "traceparent": TRACEPARENT,
        "tracestate": "stale=1",
        "x-error-kind": "invalid",
    }
    with tracing.publishing("", "some.queue", headers):
        pass
    [send] = spans.get_finished_spans()
    assert headers["x-error-kind"] == "invalid"
    assert traceparent_ids(headers["traceparent"]) == (hex_trace(send), hex_span(send))
    assert "tracestate" not in headers
    assert send.parent is None


def test_new_trace_starts_a_trace_of_its_own_under_any_current_span(
    spans: InMemorySpanExporter,
) -> None:
    """The events bridge: one trace per polled batch, its context on what it publishes."""
    with tracing.new_trace("outer"), tracing.new_trace("poll scx events", source="scx"):
        tracing.annotate(**{"messaging.batch.message_count": 2})
        published: list[dict[str, Any]] = [{}, {}]
        for headers in published:
            with tracing.publishing("marketplace", "ticket.replied", headers):
                pass
    by_name = {span.name: span for span in spans.get_finished_spans()}
    batch = by_name["poll scx events"]
    assert batch.parent is None
    assert hex_trace(batch) != hex_trace(by_name["outer"])
    assert dict(batch.attributes or {})["messaging.batch.message_count"] == 2
    sends = named(spans, "send marketplace")
    assert {parent_of(send) for send in sends} == {hex_span(batch)}
    assert [traceparent_ids(h["traceparent"])[0] for h in published] == [hex_trace(batch)] * 2


def test_the_settings_read_the_exporter_list_and_the_service_name() -> None:
    from worker.core.settings import ConfigError, load_settings

    assert load_settings(otel_traces_exporter=" Console, OTLP ").otel_traces_exporter == (
        "console,otlp"
    )
    assert load_settings(otel_traces_exporter="").otel_traces_exporter == "none"
    assert load_settings(otel_service_name="").otel_service_name is None
    with pytest.raises(ConfigError, match=r"OTEL_TRACES_EXPORTER: .*exporter names"):
        load_settings(otel_traces_exporter="otlp;console")


def test_the_worker_does_not_import_opentelemetry_while_tracing_is_off() -> None:
    code = (
        "import worker.cli, worker.forward.consumer, worker.obs.logging, worker.scx\n"
        "import worker.obs.tracing\n"
        "assert not worker.obs.tracing.configure('none', None)"
    )
    assert modules_loaded(code, "opentelemetry") == []
