"""``scx-forwarder events``: wire settings, API client and bridge; map signals to a drain.

As for ``run`` (``worker.forward.service``): the metrics and probe server runs around the bridge;
the first SIGTERM/SIGINT lets the batch in hand finish (publish, confirm, acknowledge)
within ``WORKER_SHUTDOWN_GRACE`` and exits 0; past the grace, or at a second signal, the
batch is abandoned (SCX delivers its events again) and the process exits 0 all the same.
"""

from __future__ import annotations

import asyncio
import signal

import aiormq
import structlog
from pydantic import SecretStr

from worker.core.errors import EXIT_FAILED, FatalError, ShuttingDown
from worker.core.settings import Settings
from worker.events.bridge import Bridge
from worker.events.publisher import BROKER_ERRORS
from worker.obs import health, metrics
from worker.scx import ScxClient

log = structlog.get_logger(__name__)


async def serve_events(settings: Settings, refresh_token: SecretStr) -> int:
    # The bridge polls seldom beside the workers: it leaves a window's last calls to them.
    async with (
        ScxClient(settings, refresh_token, background=True) as client,
        health.serving(settings),
    ):
        bridge = Bridge(settings, client)
        metrics.watch_consumer(lambda: bridge.running)
        task = asyncio.ensure_future(bridge.run())
        loop = asyncio.get_running_loop()
        signals = 0
        timer: asyncio.TimerHandle | None = None

        def give_up() -> None:
            log.warning("events.grace_over", grace_s=settings.worker_shutdown_grace)
            client.interrupt_waits()
            task.cancel()

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals, timer
            signals += 1
            log.info("worker.signal", signal=sig.name, count=signals)
            if signals == 1:
                log.info("worker.draining", in_hand=bridge.busy)
                bridge.stop()
                timer = loop.call_later(settings.worker_shutdown_grace, give_up)
            else:
                give_up()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await task
        except (asyncio.CancelledError, ShuttingDown):
            log.warning("worker.cancelled", detail="batch in hand abandoned; SCX delivers it again")
            return bridge.exit_code
        except FatalError as exc:
            log.critical("worker.fatal", error=str(exc))
            return exc.exit_code
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            log.error(
                "worker.topology_mismatch",
                exchange=settings.amqp_exchange,
                queue=settings.events_unrouted_queue,
                error=str(exc),
                hint="the exchange or the unrouted queue exists with other arguments",
            )
            return EXIT_FAILED
        except BROKER_ERRORS as exc:
            log.error(
                "worker.broker_unreachable",
                broker=settings.amqp_url_redacted,
                error=f"{type(exc).__name__}: {exc}",
            )
            return EXIT_FAILED
        finally:
            if timer is not None:
                timer.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
