"""``scx-forwarder run``: wire settings, API client and forwarder; map signals to a drain.

The metrics and probe server (``worker.obs.health``, ``METRICS_PORT``) starts before the
forwarder connects, so ``/healthz`` answers during start-up and ``/readyz`` says why it
is not ready yet, and it stops after the drain. Readiness reads the forwarder's own
connection and consumer and the client's token.

Signals as every service takes them (``worker.core.runtime``): the first SIGTERM/SIGINT
asks the forwarder to stop consuming and drain within ``WORKER_SHUTDOWN_GRACE`` (it bounds
the drain itself); a second one cancels in-flight work at once (their messages return to
the queue when the connection closes). A broker that cannot be reached, or a queue
declared otherwise, ends it with ``EXIT_FAILED`` (``worker.amqp.errors``).
"""

from __future__ import annotations

from pydantic import SecretStr

from worker.amqp import broker
from worker.amqp.errors import exits
from worker.core.runtime import Shutdown, until_signalled
from worker.core.settings import Settings
from worker.forward import queue_stats
from worker.forward.consumer import Forwarder
from worker.forward.mapping import Mapper
from worker.obs import health
from worker.scx import ScxClient

_TOPOLOGY_HINT = (
    "the queue exists with other arguments (type, delivery limit, dead-letter settings); "
    "set AMQP_QUEUE_TYPE to match or use a new AMQP_QUEUE"
)


async def serve(settings: Settings, refresh_token: SecretStr, mapper: Mapper | None) -> int:
    async with ScxClient(settings, refresh_token) as client:
        forwarder = Forwarder(settings, client, mapper=mapper)
        readiness = health.Readiness(
            connected=lambda: broker.is_up(forwarder.connection),
            consuming=forwarder.consuming.is_set,
            token=client.instrumentation.token_status,
        )
        queues = queue_stats.worker_queues(settings)
        async with (
            health.serving(settings, readiness),
            queue_stats.watching(
                queues, settings.metrics_queue_interval, lambda: forwarder.connection
            ),
        ):
            shutdown = Shutdown(
                drain=forwarder.stop,
                exit_code=lambda: forwarder.exit_code,
                abandoned="second signal: in-flight work abandoned",
                failed=exits(settings, queue=settings.amqp_queue, hint=_TOPOLOGY_HINT),
            )
            return await until_signalled(forwarder.run(), shutdown)
