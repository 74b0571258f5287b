"""``scx-forwarder run``: wire settings, API client and forwarder; map signals to a drain.

The metrics and probe server (``worker.obs.health``, ``METRICS_PORT``) starts before the
forwarder connects, so ``/healthz`` answers during start-up and ``/readyz`` says why it
is not ready yet, and it stops after the drain.

The first SIGTERM/SIGINT asks the forwarder to stop consuming and drain within
``WORKER_SHUTDOWN_GRACE``; a second one cancels in-flight work at once (their messages
return to the queue when the connection closes).
"""

from __future__ import annotations

import asyncio
import signal

import aiormq
import structlog
from pydantic import SecretStr

from worker.core.errors import EXIT_FAILED
from worker.core.settings import Settings
from worker.forward import queue_stats
from worker.forward.consumer import Forwarder
from worker.forward.mapping import Mapper
from worker.obs import health, metrics
from worker.scx import ScxClient

log = structlog.get_logger(__name__)


async def serve(settings: Settings, refresh_token: SecretStr, mapper: Mapper | None) -> int:
    async with (
        ScxClient(settings, refresh_token) as client,
        health.serving(settings),
        queue_stats.watching(queue_stats.worker_queues(settings), settings.metrics_queue_interval),
    ):
        forwarder = Forwarder(settings, client, mapper=mapper)
        metrics.watch_consumer(forwarder.consuming.is_set)
        task = asyncio.ensure_future(forwarder.run())
        signals = 0

        def on_signal(sig: signal.Signals) -> None:
            nonlocal signals
            signals += 1
            log.info("worker.signal", signal=sig.name, count=signals)
            if signals == 1:
                forwarder.stop()
            else:
                task.cancel()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            return await task
        except asyncio.CancelledError:
            log.warning("worker.cancelled", detail="second signal: in-flight work abandoned")
            return forwarder.exit_code
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            log.error(
                "worker.topology_mismatch",
                queue=settings.amqp_queue,
                error=str(exc),
                hint="the queue exists with other arguments (type, delivery limit, "
                "dead-letter settings); set AMQP_QUEUE_TYPE to match or use a new AMQP_QUEUE",
            )
            return EXIT_FAILED
        except (OSError, aiormq.exceptions.AMQPError) as exc:
            log.error(
                "worker.broker_unreachable",
                broker=settings.amqp_url_redacted,
                error=f"{type(exc).__name__}: {exc}",
            )
            return EXIT_FAILED
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
