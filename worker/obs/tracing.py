"""OpenTelemetry traces, optional: the one module the rest of the worker calls for them.

On only when the ``otel`` extra is installed (``pip install 'scx-ticket-forwarder[otel]'``)
and ``OTEL_TRACES_EXPORTER`` names an exporter (``console``, ``otlp``, ...; unset or
``none``: off). Off, every function here returns at its first line and no span object is
made; the extra is imported by ``configure`` alone, so the worker runs without it.

What is traced (docs/guides/tracing.md):

- ``consuming``: a CONSUMER span per delivery (``process <queue>``) that continues the
  W3C ``traceparent``/``tracestate`` of the message headers, or starts a trace;
- ``traced_transport``: a CLIENT span per HTTP request that goes on the wire (every
  attempt, ``POST /v1/auth``, the resend after a 401, uploads, downloads, event polls),
  with its ``traceparent`` injected into the request. It wraps the transport, because
  the worker's httpx runs on aiohttp, which httpx's instrumentation does not see;
- ``publishing``: a PRODUCER span around a publish, its context written into the
  message's headers (dead-letter and delay copies, outcome events, the events bridge).
  A copy therefore carries the span that made it, not the original publisher's: a
  message that arrived without a trace still has one in the DLQ, and a delayed message
  that comes back continues the trace of the attempt that delayed it;
- ``new_trace``: a span that starts a trace of its own (the events bridge, one per batch);
- ``current_ids``: the current trace and span id, for the log lines (``worker.obs.logging``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from aio_pika.abc import AbstractIncomingMessage

from worker.core.settings import ConfigError

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from worker.obs._otel import Tracing

log = structlog.get_logger(__name__)

_active: Tracing | None = None
# One shared no-op: entering and leaving it costs next to nothing and allocates nothing.
_OFF: AbstractContextManager[None] = contextlib.nullcontext()


def enabled() -> bool:
    return _active is not None


def install(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` from now on (``None``: stop). Tests use it directly.

    Only clients built afterwards get a traced transport.
    """
    global _active
    if provider is None:
        _active = None
        return
    from worker.obs._otel import Tracing

    _active = Tracing(provider)


def configure(exporters: str, service_name: str | None) -> bool:
    """Turn tracing on as the OTel environment describes; returns whether it is on.

    ``exporters`` is ``OTEL_TRACES_EXPORTER``. Unset or ``none`` leaves tracing off, and so
    does ``OTEL_SDK_DISABLED=true``. Asked for while the extra is missing, it is off too,
    with a warning: traces are a diagnosis aid and must not keep tickets from flowing. An
    exporter that is not installed is a configuration error (``ConfigError``, exit 2), like
    any other bad setting.
    """
    names = [name.strip() for name in exporters.split(",") if name.strip() not in ("", "none")]
    if not names or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        from opentelemetry import trace

        from worker.obs import _otel
    except ImportError as exc:
        log.warning(
            "tracing.unavailable",
            detail="OTEL_TRACES_EXPORTER is set but the otel extra is not installed: "
            "pip install 'scx-ticket-forwarder[otel]'",
            error=str(exc),
        )
        return False
    try:
        provider = _otel.provider_from_env(names, service_name)
    except _otel.ExporterMissing as exc:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: {exc}") from None
    # Global too, so that any instrumentation a user adds reports into the same pipeline.
    trace.set_tracer_provider(provider)
    install(provider)
    log.info("tracing.enabled", exporters=names)
    return True


@contextlib.contextmanager
def started(exporters: str, service_name: str | None) -> Iterator[bool]:
    """``configure`` for the length of a command, then ``shutdown``."""
    try:
        yield configure(exporters, service_name)
    finally:
        shutdown()


def shutdown() -> None:
    """Export what is still buffered, then stop tracing (at the end of a command)."""
    global _active
    if _active is not None:
        _active.shutdown()
        _active = None


def consuming(queue: str, message: AbstractIncomingMessage) -> AbstractContextManager[object]:
    """The consumer span of one delivery from ``queue``; enter it around all its work."""
    if _active is None:
        return _OFF
    return _active.consuming(
        queue,
        message.headers,
        {
            "messaging.destination.name": message.exchange,
            "messaging.rabbitmq.destination.routing_key": message.routing_key or None,
            "messaging.rabbitmq.message.delivery_tag": message.delivery_tag,
            "messaging.message.id": message.message_id,
            "messaging.message.conversation_id": message.correlation_id,
            "messaging.message.body.size": len(message.body),
        },
    )


def publishing(
    exchange: str, routing_key: str, headers: MutableMapping[str, Any]
) -> AbstractContextManager[object]:
    """A producer span for a publish; writes its trace context into ``headers``.

    Build the message from ``headers`` inside the ``with`` block. Off, ``headers`` is
    left as it is (a copy keeps the original publisher's ``traceparent``).
    """
    if _active is None:
        return _OFF
    return _active.publishing(exchange, routing_key, headers)


def new_trace(name: str, **attributes: Any) -> AbstractContextManager[object]:
    """A span that starts a trace of its own, whatever span is current.

    For the events bridge, one per polled batch; the poll's GET, the downloads and each
    publish become its children::

        with tracing.new_trace("poll scx events"):
            events = await poll()  # a client span, via the ScxClient's transport
            tracing.annotate(**{"messaging.batch.message_count": len(events)})
            for event in events:
                headers = {...}
                with tracing.publishing(exchange, routing_key, headers):
                    await channel_exchange.publish(aio_pika.Message(body, headers=headers), ...)
    """
    if _active is None:
        return _OFF
    return _active.new_trace(name, attributes)


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (``None`` values are left out)."""
    if _active is not None:
        _active.annotate(attributes)


def ticket(ticket_id: str, seller_id: str) -> None:
    """Name the ticket on the current (consumer) span: ``scx.ticket_id``, ``scx.seller_id``."""
    if _active is not None:
        _active.annotate({"scx.ticket_id": ticket_id, "scx.seller_id": seller_id})


def event(name: str, **attributes: Any) -> None:
    """Add an event to the current span (``scx.retry``, for example)."""
    if _active is not None:
        _active.event(name, attributes)


def settled(
    outcome: str,
    description: str | None = None,
    *,
    attempts: int | None = None,
    kind: str | None = None,
) -> None:
    """Record on the current span how the delivery ended (``scx.outcome``).

    ``outcome``: ``forwarded``, ``delayed``, ``dead_lettered`` (``kind``: the
    ``x-error-kind``), ``returned`` or ``failed``; the span of a dead-lettered or failed
    delivery has the status ERROR with ``description``.
    """
    if _active is not None:
        _active.settled(outcome, {"scx.attempts": attempts, "scx.error_kind": kind}, description)


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span in lower-case hex, or ``None``."""
    if _active is None:
        return None
    return _active.current_ids()


def traced_transport(transport: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
    """``transport`` with a client span and ``traceparent`` per request; itself when off."""
    if _active is None:
        return transport
    return _active.transport(transport)
