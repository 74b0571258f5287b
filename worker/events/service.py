"""``scx-forwarder events``: wire settings, API client and bridge; map signals to a drain.

As for ``run`` (``worker.forward.service``): the metrics and probe server runs around the
bridge, and signals are taken as every service takes them (``worker.core.runtime``). The
first SIGTERM/SIGINT lets the batch in hand finish (publish, confirm, acknowledge) within
``WORKER_SHUTDOWN_GRACE`` and exits 0; past the grace, or at a second signal, the batch is
abandoned (SCX delivers its events again) and the process exits 0 all the same.
"""

from __future__ import annotations

import structlog
from pydantic import SecretStr

from worker.amqp import broker
from worker.amqp.errors import exits
from worker.core.runtime import Shutdown, until_signalled
from worker.core.settings import Settings
from worker.events.bridge import Bridge
from worker.obs import health
from worker.scx import ScxClient

log = structlog.get_logger(__name__)


async def serve_events(settings: Settings, refresh_token: SecretStr) -> int:
    # The bridge polls seldom beside the workers: it leaves a window's last calls to them.
    async with ScxClient(settings, refresh_token, background=True) as client:
        bridge = Bridge(settings, client)
        readiness = health.Readiness(
            connected=lambda: broker.is_up(bridge.connection),
            consuming=lambda: bridge.running,
            token=client.instrumentation.token_status,
        )

        def drain() -> None:
            log.info("worker.draining", in_hand=bridge.busy)
            bridge.stop()

        def abandon() -> None:
            log.warning("events.grace_over", grace_s=settings.worker_shutdown_grace)
            client.interrupt_waits()

        shutdown = Shutdown(
            drain=drain,
            abandon=abandon,
            grace=settings.worker_shutdown_grace,
            exit_code=lambda: bridge.exit_code,
            abandoned="batch in hand abandoned; SCX delivers it again",
            failed=exits(
                settings,
                exchange=settings.amqp_exchange,
                queue=settings.events_unrouted_queue,
                hint="the exchange or the unrouted queue exists with other arguments",
            ),
        )
        async with health.serving(settings, readiness):
            return await until_signalled(bridge.run(), shutdown)
