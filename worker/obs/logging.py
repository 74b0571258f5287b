"""structlog set-up: JSON lines on stdout in production, a readable console on a TTY.

The standard library's loggers (aio-pika, aiormq, httpx) are routed through the same
processors, so every line on stdout is one JSON object. Nothing here knows any secret:
secrets are kept out of log calls at the source (``SecretStr``, redacted URLs), and
``drop_secrets`` is a last guard that blanks well-known secret keys should one slip in.

One foreign line is translated rather than passed on: on a broker restart aio-pika logs
``Callback <OneShotCallback ... RobustChannel._on_close> error: ChannelInvalidStateError``
at error level, when a channel's restore meets a connection that closed again meanwhile.
Nothing is lost by it (the robust connection restores the channel on its next connect),
but an alert on error lines would fire on every restart, so it becomes a warning of our
own, ``broker.channel_restore_failed`` (``BrokerRestartNoise``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog
from structlog.typing import Processor

from worker.obs import tracing

_SECRET_KEYS = frozenset(
    {"authorization", "auth_token", "authtoken", "refresh_token", "refreshtoken", "password"}
)


def drop_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event_dict.keys() & _SECRET_KEYS:
        event_dict[key] = "***"
    return event_dict


def add_trace_ids(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``trace_id`` and ``span_id`` of the current span (32 and 16 lower-case hex digits,
    as in ``traceparent``), so a log line leads to its trace; nothing while tracing is off."""
    ids = tracing.current_ids()
    if ids is not None:
        event_dict["trace_id"], event_dict["span_id"] = ids
    return event_dict


class BrokerRestartNoise(logging.Filter):
    """Turns aio-pika's callback errors about a closed channel into our own warning.

    Installed on aio-pika's ``aio_pika.tools`` logger, which logs every failed callback as
    ``"Callback %r error: %s: %s" % (callback, type name, error)``; other failures of a
    callback stay errors.
    """

    _FORMAT = "Callback %r error: %s: %s"

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.msg != self._FORMAT or not isinstance(args, tuple) or len(args) != 3:
            return True
        callback, kind, error = args
        if kind != "ChannelInvalidStateError":
            return True
        structlog.get_logger("worker.amqp").warning(
            "broker.channel_restore_failed",
            callback=_callback_name(callback),
            error=f"{kind}: {error}",
            detail="the channel is restored on the next connect",
        )
        return False


def _callback_name(callback: object) -> str:
    """``RobustChannel._on_close`` for aio-pika's one-shot wrapper of that bound method."""
    inner = getattr(callback, "callback", callback)
    return str(getattr(inner, "__qualname__", type(inner).__qualname__))


_RESTART_NOISE = BrokerRestartNoise()


def configure_logging(
    level: str = "INFO", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Configure structlog and the standard library logging once per process."""
    console = fmt == "console" or (fmt == "auto" and sys.stdout.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        drop_secrets,
    ]
    renderer: Processor
    if console:
        renderer = structlog.dev.ConsoleRenderer()
        logger_factory: Any = structlog.PrintLoggerFactory()
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
        logger_factory = structlog.BytesLoggerFactory()

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=logger_factory,
        cache_logger_on_first_use=True,
    )

    # Foreign (stdlib) records take the same road; the formatter renders to str, so the
    # JSON serializer there must produce str too.
    foreign_renderer: Processor = (
        renderer
        if console
        else structlog.processors.JSONRenderer(serializer=lambda o, **_: orjson.dumps(o).decode())
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                foreign_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO with its URL: one line per ticket is the canonical
    # outcome line's job, not the transport's.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    tools = logging.getLogger("aio_pika.tools")
    if _RESTART_NOISE not in tools.filters:
        tools.addFilter(_RESTART_NOISE)
