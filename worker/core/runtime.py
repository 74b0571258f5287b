"""The one way a long-running command lives and ends: signals, grace period, exit code.

``run``, ``events`` and ``emulator`` each hand ``until_signalled`` their main coroutine and
a ``Shutdown`` saying what a signal means to them::

    SIGTERM/SIGINT #1  ── Shutdown.drain() ──> the service stops taking work, finishes what
                          it holds, and its coroutine returns its exit code
                          (with Shutdown.grace: past it, as at a second signal)
    SIGTERM/SIGINT #2  ── Shutdown.abandon(), then the coroutine is cancelled: the work in
                          hand is given up (the broker or SCX delivers it again)

    the coroutine ends with            exit code
    its own return value               that value (``EXIT_*`` of ``worker.core.errors``)
    cancelled, or ``ShuttingDown``     ``Shutdown.exit_code()`` (``worker.cancelled`` logged)
    ``FatalError``                     its ``exit_code`` (``worker.fatal`` logged)
    anything ``Shutdown.failed`` maps  what it returns (the broker errors: ``EXIT_FAILED``)

Without a ``Shutdown`` (the emulator) the first signal cancels at once and the exit code is
``EXIT_OK``. The handlers are removed when the coroutine ends, so a later signal has its
default effect. This follows arq's worker: stop taking work, wait up to a grace period that
matches Kubernetes' ``terminationGracePeriodSeconds``, then cancel.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from worker.core.errors import EXIT_OK, FatalError, ShuttingDown

log = structlog.get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _nothing() -> None:
    return None


def _not_ours(_: BaseException) -> int | None:
    return None


@dataclass(frozen=True, kw_only=True)
class Shutdown:
    """What a service does on signals; see the module docstring."""

    drain: Callable[[], None]
    """First signal: stop taking work and finish what is in hand."""
    exit_code: Callable[[], int]
    """The exit code when the work in hand was abandoned."""
    abandoned: str
    """What abandoning means for this service, logged as ``worker.cancelled``'s detail."""
    abandon: Callable[[], None] = _nothing
    """Second signal, or the grace is over: called just before the cancel."""
    grace: float | None = None
    """Seconds the drain may take before it is abandoned; None: the service bounds it."""
    failed: Callable[[BaseException], int | None] = _not_ours
    """Log an error that ended the service and return its exit code; None re-raises it."""


async def until_signalled(main: Coroutine[Any, Any, int], shutdown: Shutdown | None) -> int:
    """Run ``main`` to its end, mapping SIGTERM/SIGINT as ``shutdown`` says."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    signals = _Signals(task, shutdown, loop)
    for sig in SIGNALS:
        loop.add_signal_handler(sig, signals.received, sig)
    try:
        return await task
    except (asyncio.CancelledError, ShuttingDown):
        if shutdown is None:
            return EXIT_OK
        log.warning("worker.cancelled", detail=shutdown.abandoned)
        return shutdown.exit_code()
    except FatalError as exc:
        log.critical("worker.fatal", error=str(exc))
        return exc.exit_code
    except Exception as exc:
        if shutdown is None or (code := shutdown.failed(exc)) is None:
            raise
        return code
    finally:
        signals.close()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


class _Signals:
    """Counts the signals and acts on each as ``Shutdown`` says."""

    def __init__(
        self,
        task: asyncio.Future[int],
        shutdown: Shutdown | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._task = task
        self._shutdown = shutdown
        self._loop = loop
        self._count = 0
        self._timer: asyncio.TimerHandle | None = None

    def received(self, sig: signal.Signals) -> None:
        self._count += 1
        shutdown = self._shutdown
        if shutdown is None:
            self._task.cancel()
            return
        log.info("worker.signal", signal=sig.name, count=self._count)
        if self._count > 1:
            self._give_up()
            return
        shutdown.drain()
        if shutdown.grace is not None:
            self._timer = self._loop.call_later(shutdown.grace, self._give_up)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _give_up(self) -> None:
        if self._shutdown is not None:
            self._shutdown.abandon()
        self._task.cancel()
