"""What the broker side can raise, named once, and what a service does when one ends it.

aiormq's exceptions do not share one base, so every ``except`` that means "the broker"
uses these tuples rather than its own list::

    BROKER_ERRORS                     anything the broker side raises
    ├── BROKER_GONE                   the channel or connection is gone, not the message:
    │   ├── OSError                   sockets, ConnectionError, TimeoutError, and aiormq's
    │   │                             AMQPConnectionError (ConnectionClosed, refused login...)
    │   ├── AMQPChannelError          the broker closed the channel (ChannelClosed and the
    │   │                             refusals below it: PreconditionFailed, AccessRefused)
    │   └── ChannelInvalidStateError  a RuntimeError, not an AMQPError: a call on a channel
    │                                 that closed meanwhile (a broker restart, a lost node)
    └── AMQPError                     besides: DeliveryError/PublishError (a nack, a return),
                                      protocol errors

A caller that tells a refusal (``ChannelPreconditionFailed``) apart from a loss catches the
refusal first: it is an ``AMQPChannelError`` too. ``ended_by`` is what ``run`` and ``events``
do with an error that ends them: one log line and ``EXIT_FAILED`` (``exits`` binds it to a
service for ``worker.core.runtime.Shutdown.failed``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import aiormq
import structlog

from worker.core.errors import EXIT_FAILED
from worker.core.settings import Settings

log = structlog.get_logger(__name__)

BROKER_GONE: tuple[type[BaseException], ...] = (
    OSError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.AMQPChannelError,
    aiormq.exceptions.ChannelInvalidStateError,
)
BROKER_ERRORS: tuple[type[BaseException], ...] = (*BROKER_GONE, aiormq.exceptions.AMQPError)


def ended_by(exc: BaseException, *, broker: str, topology: Mapping[str, str]) -> int | None:
    """Log why the broker ended a service and return its exit code; None if it did not.

    ``broker`` is ``AMQP_URL`` redacted; ``topology`` names what the service declares and
    how to fix a mismatch (``queue``/``exchange``, ``hint``), logged with a refusal.
    """
    if isinstance(exc, aiormq.exceptions.ChannelPreconditionFailed):
        log.error("worker.topology_mismatch", **topology, error=str(exc))
        return EXIT_FAILED
    if isinstance(exc, BROKER_ERRORS):
        log.error("worker.broker_unreachable", broker=broker, error=f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    return None


def exits(settings: Settings, **topology: str) -> Callable[[BaseException], int | None]:
    """``ended_by`` for one service: its broker, and what it declares (``topology``)."""
    return lambda exc: ended_by(exc, broker=settings.amqp_url_redacted, topology=topology)
