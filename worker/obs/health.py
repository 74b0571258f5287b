"""One small HTTP server for Prometheus and the Kubernetes probes, on ``METRICS_PORT``.

=============  ==========================================================================
route          answers
=============  ==========================================================================
``/metrics``   the Prometheus exposition (text, or OpenMetrics when the scraper asks)
``/healthz``   liveness: 200 while the event loop's heartbeat is fresher than
               ``STALE_AFTER`` seconds, else 503. A wedged loop cannot answer at all, so
               the probe's own timeout catches that; the heartbeat catches a loop that was
               stuck and is only now catching up.
``/readyz``    readiness: 200 when connected to the broker, consuming, and a token is held
               or obtainable, else 503. Draining after SIGTERM and a lost broker
               connection make it 503.
=============  ==========================================================================

The service that runs says what ready means: it hands ``serving`` a ``Readiness``, three
callables over its own state (its connection, its consumer, its SCX client's token), and
the same callables feed the ``broker_connected`` and ``consumer_up`` gauges. Nothing here
reads process-wide state.

Both probes answer JSON saying which check failed. The server runs on the worker's own
event loop (an aiohttp app): the probes then test the loop that does the work, and the
readiness checks read asyncio state without locks.

A port that cannot be bound is logged (``health.unavailable``) and the worker forwards
anyway: tickets matter more than their metrics, and the failing probes make the
problem visible to the orchestrator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

from worker.core.settings import Settings
from worker.obs import metrics

log = structlog.get_logger(__name__)

BEAT_EVERY = 1.0
# Ten missed beats: far beyond any legitimate pause (a GC, a large DLQ copy), far below
# the liveness probe's failureThreshold x periodSeconds.
STALE_AFTER = 10.0


class Heartbeat:
    """Ticks every ``BEAT_EVERY`` seconds on the event loop and records how late it ran."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.last = clock()

    async def run(self) -> None:
        while True:
            before = self._clock()
            await asyncio.sleep(BEAT_EVERY)
            self.last = self._clock()
            metrics.loop_lag(max(0.0, self.last - before - BEAT_EVERY))

    def age(self) -> float:
        return self._clock() - self.last

    def fresh(self) -> bool:
        return self.age() < STALE_AFTER


@dataclass(frozen=True, kw_only=True)
class Readiness:
    """What ``/readyz`` asks the running service; each a cheap call that does no I/O."""

    connected: Callable[[], bool]
    """The broker connection is open."""
    consuming: Callable[[], bool]
    """The service takes work (the worker's consumer, the bridge's session)."""
    token: Callable[[], tuple[bool, str]]
    """Whether an SCX token is held or obtainable, and why (``Instrumentation.token_status``)."""

    def consumer_up(self) -> bool:
        return self.connected() and self.consuming()

    def checks(self) -> dict[str, dict[str, Any]]:
        """Each readiness check with ``ok`` and a short ``detail``."""
        broker = self.connected()
        consuming = broker and self.consuming()
        token_ok, token_detail = self.token()
        return {
            "broker": {"ok": broker, "detail": "connected" if broker else "not connected"},
            "consumer": {
                "ok": consuming,
                "detail": "consuming" if consuming else "not consuming",
            },
            "token": {"ok": token_ok, "detail": token_detail},
        }


def make_app(heartbeat: Heartbeat, readiness: Readiness) -> web.Application:
    async def metrics_page(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})

    async def healthz(_: web.Request) -> web.Response:
        alive = heartbeat.fresh()
        body = {"alive": alive, "heartbeat_age_s": round(heartbeat.age(), 3)}
        return _json(body, 200 if alive else 503)

    async def readyz(_: web.Request) -> web.Response:
        checks = readiness.checks()
        ready = all(check["ok"] for check in checks.values())
        return _json({"ready": ready, "checks": checks}, 200 if ready else 503)

    app = web.Application()
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def serving(settings: Settings, readiness: Readiness) -> AsyncIterator[str | None]:
    """Serve metrics and probes while the block runs; yields the URL (None: not serving)."""
    metrics.watch_probes(readiness.connected, readiness.consumer_up)
    if settings.metrics_port == 0:
        yield None
        return
    heartbeat = Heartbeat()
    runner = web.AppRunner(make_app(heartbeat, readiness), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.metrics_host, settings.metrics_port)
        try:
            await site.start()
        except OSError as exc:
            log.error(
                "health.unavailable",
                host=settings.metrics_host,
                port=settings.metrics_port,
                error=f"{type(exc).__name__}: {exc}",
            )
            yield None
            return
        beat = asyncio.create_task(heartbeat.run())
        url = f"http://{settings.metrics_host}:{settings.metrics_port}"
        log.info("health.listening", url=url, routes=["/metrics", "/healthz", "/readyz"])
        try:
            yield url
        finally:
            beat.cancel()
    finally:
        await runner.cleanup()


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
