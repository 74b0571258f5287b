"""The OpenTelemetry side of ``worker.obs.tracing``; imported only when the ``otel`` extra is there.

Nothing outside ``worker.obs.tracing`` imports this module: the rest of the worker calls the
facade, which is a no-op while tracing is off.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

import httpx
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, format_span_id, format_trace_id

DEFAULT_SERVICE_NAME = "scx-forwarder"
_EXPORTER_GROUP = "opentelemetry_traces_exporter"
# What ``otlp`` means: the protocol variables pick the entry point, as in the SDK's own
# configurator, but without a protocol it is http/protobuf (the OTLP spec's default and
# the exporter the extra installs), not gRPC (the Python SDK's historical default).
_OTLP_BY_PROTOCOL = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


class ExporterMissing(Exception):
    """``OTEL_TRACES_EXPORTER`` names an exporter that is not installed."""


def _package_version() -> str:
    try:
        return version("scx-ticket-forwarder")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0+unknown"


def provider_from_env(exporter_names: Iterable[str], service_name: str | None) -> TracerProvider:
    """A ``TracerProvider`` built the way the OTel environment variables describe.

    ``exporter_names`` come from ``OTEL_TRACES_EXPORTER``; each is an entry point of
    ``opentelemetry_traces_exporter`` (``console``, ``otlp``, or whatever else is installed,
    e.g. ``zipkin_json``), exported through a ``BatchSpanProcessor`` (``OTEL_BSP_*``). The
    exporters read their own variables (``OTEL_EXPORTER_OTLP_*``), the provider reads the
    sampler (``OTEL_TRACES_SAMPLER``), the resource reads ``OTEL_RESOURCE_ATTRIBUTES``.
    """
    exporters = [_exporter(name)() for name in exporter_names]
    resource = Resource.create({SERVICE_NAME: service_name} if service_name else {})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> type[SpanExporter]:
    if name == "otlp":
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        ).strip()
        if protocol not in _OTLP_BY_PROTOCOL:
            raise ExporterMissing(f"OTLP protocol {protocol!r} is not supported")
        name = _OTLP_BY_PROTOCOL[protocol]
    found = list(entry_points(group=_EXPORTER_GROUP, name=name))
    if not found:
        have = sorted(ep.name for ep in entry_points(group=_EXPORTER_GROUP))
        raise ExporterMissing(
            f"no span exporter {name!r} is installed (installed: {', '.join(have)})"
        )
    exporter: type[SpanExporter] = found[0].load()
    return exporter


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """W3C fields from AMQP headers: values may arrive as bytes, names in any case."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            # AMQP header names are case-sensitive; some publishers capitalise them.
            value = next((v for k, v in carrier.items() if k.lower() == key), None)
        if isinstance(value, bytes | bytearray):
            # A long string that is not UTF-8 arrives as bytes, a byte array as bytearray.
            value = bytes(value).decode("latin-1")
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_HEADERS = _HeaderGetter()
_FAILED_OUTCOMES = frozenset({"dead_lettered", "failed"})


class Tracing:
    """Spans of one process, from one ``TracerProvider``."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("scx-forwarder", _package_version())

    # --- AMQP -------------------------------------------------------------------------

    @contextmanager
    def consuming(
        self,
        queue: str,
        headers: Mapping[str, Any] | None,
        attributes: Mapping[str, Any],
    ) -> Iterator[Span]:
        """The consumer span of one delivery, continuing the trace its headers carry."""
        parent = propagate.extract(headers or {}, getter=_HEADERS)
        with self._tracer.start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.subscription.name": queue,
                **{k: v for k, v in attributes.items() if v is not None},
            },
        ) as span:
            yield span

    @contextmanager
    def publishing(
        self, exchange: str, routing_key: str, headers: MutableMapping[str, Any]
    ) -> Iterator[Span]:
        """A producer span; its context replaces any trace fields in ``headers``."""
        with self._tracer.start_as_current_span(
            f"send {exchange or routing_key}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": exchange,
                "messaging.rabbitmq.destination.routing_key": routing_key,
            },
        ) as span:
            for field in propagate.get_global_textmap().fields:
                headers.pop(field, None)
            propagate.inject(headers)
            yield span

    @contextmanager
    def new_trace(self, name: str, attributes: Mapping[str, Any]) -> Iterator[Span]:
        """A span that starts a trace of its own, whatever is current."""
        with self._tracer.start_as_current_span(
            name, context=Context(), kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span

    # --- the current span ---------------------------------------------------------------

    @staticmethod
    def annotate(attributes: Mapping[str, Any]) -> None:
        span = trace.get_current_span()
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    @staticmethod
    def event(name: str, attributes: Mapping[str, Any]) -> None:
        span = trace.get_current_span()
        span.add_event(name, {k: v for k, v in attributes.items() if v is not None})

    @staticmethod
    def settled(outcome: str, attributes: Mapping[str, Any], description: str | None) -> None:
        span = trace.get_current_span()
        span.set_attribute("scx.outcome", outcome)
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if outcome in _FAILED_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, description))

    @staticmethod
    def current_ids() -> tuple[str, str] | None:
        context = trace.get_current_span().get_span_context()
        if not context.is_valid:
            return None
        return format_trace_id(context.trace_id), format_span_id(context.span_id)

    # --- HTTP ---------------------------------------------------------------------------

    def transport(self, inner: httpx.AsyncBaseTransport) -> httpx.AsyncBaseTransport:
        return _TracedTransport(inner, self._tracer)

    def shutdown(self) -> None:
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()  # flushes what the batch processors still hold


class _TracedTransport(httpx.AsyncBaseTransport):
    """A client span per request that goes on the wire, its context in ``traceparent``.

    Below the auth flow and the retry loop, so every attempt, every ``POST /v1/auth`` and
    a resend after a 401 are each their own span, as the HTTP conventions ask. The span
    ends with the answer's headers (a streamed body is read after it).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        # No query string: a presigned download URL carries its signature there.
        full = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
        with self._tracer.start_as_current_span(
            f"{request.method} {url.path}",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "url.full": full,
                "server.address": url.host,
                "server.port": url.port or (443 if url.scheme == "https" else 80),
            },
        ) as span:
            propagate.inject(request.headers)
            try:
                response = await self._inner.handle_async_request(request)
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__qualname__)
                raise
            status = response.status_code
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                span.set_attribute("error.type", str(status))
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()
