"""/healthz and /readyz as the kubelet sees them: a worker process, real HTTP, the real broker."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator

import httpx
import pytest
from aio_pika.abc import AbstractChannel
from aiohttp import web

from tests.support.broker import Names, publish
from tests.support.events import event
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn, worker_env
from tests.support.proxy import TcpProxy
from worker.emulator import Emulator
from worker.obs import health


async def probe(port: int, path: str) -> httpx.Response | None:
    """One probe; None while nothing listens yet."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as client:
        try:
            return await client.get(path)
        except httpx.TransportError:
            return None


async def answers(port: int, path: str, status: int) -> bool:
    response = await probe(port, path)
    return response is not None and response.status_code == status


async def start(names: Names, emulator: Emulator, port: int, **extra: str) -> Process:
    worker = await spawn("run", env=worker_env(names, emulator, METRICS_PORT=str(port), **extra))
    await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
    return worker


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


async def test_probes_follow_the_worker_through_a_lost_broker_connection_and_its_stop(
    names: Names,
    emulator: Emulator,
    channel: AbstractChannel,
    unused_tcp_port: int,
) -> None:
    port = unused_tcp_port
    # Through a proxy, so the broker stays away until the test lets it back: a robust
    # connection that may reconnect at once is back within milliseconds, too fast to see.
    link = await TcpProxy().start()
    worker = await start(names, emulator, port, AMQP_URL=link.url)
    try:
        await wait_for(lambda: answers(port, "/readyz", 200), what="ready")
        ready = await probe(port, "/readyz")
        assert ready is not None
        body = ready.json()
        assert body["ready"] is True
        assert {name: check["ok"] for name, check in body["checks"].items()} == {
            "broker": True,
            "consumer": True,
            "token": True,
        }
        assert await answers(port, "/healthz", 200)

        await link.cut()
        await wait_for(lambda: answers(port, "/readyz", 503), what="not ready without a broker")
        down = await probe(port, "/readyz")
        assert down is not None
        assert down.json()["checks"]["broker"] == {"ok": False, "detail": "not connected"}
        assert await answers(port, "/healthz", 200), "alive all the same: no restart wanted"

        # The robust connection comes back by itself, and so does readiness.
        await link.restore()
        await wait_for(lambda: answers(port, "/readyz", 200), timeout=30, what="ready again")
        await publish(channel, names, [event(1)])
        await wait_for(lambda: len(emulator.state.accepted) == 1, what="forwarded after it")
        ready_again = await probe(port, "/readyz")
        assert ready_again is not None
        assert ready_again.json()["checks"]["token"]["detail"].startswith("held, expires in")
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0
        await link.close()
    assert await probe(port, "/healthz") is None, "the server stops with the worker"


async def test_a_port_in_use_is_logged_and_the_worker_forwards_anyway(
    names: Names, emulator: Emulator, channel: AbstractChannel, taken_port: int
) -> None:
    worker = await start(names, emulator, taken_port)
    try:
        [line] = [e for e in worker.events() if e["event"] == "health.unavailable"]
        assert line["port"] == taken_port
        await publish(channel, names, [event(1)])
        await wait_for(lambda: len(emulator.state.accepted) == 1, what="the ticket")
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert await worker.wait() == 0


async def test_metrics_port_0_serves_nothing(
    names: Names, emulator: Emulator, channel: AbstractChannel
) -> None:
    worker = await start(names, emulator, 0)
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0
    assert not worker.has_event("health.listening")
    assert not worker.has_event("health.unavailable")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_healthz_fails_once_the_loop_heartbeat_is_stale(unused_tcp_port: int) -> None:
    clock = FakeClock()
    heartbeat = health.Heartbeat(clock)
    runner = web.AppRunner(health.make_app(heartbeat, ready_when(lambda: True)))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        assert await answers(unused_tcp_port, "/healthz", 200)
        clock.now += health.STALE_AFTER + 1  # the loop did not beat for that long
        stale = await probe(unused_tcp_port, "/healthz")
        assert stale is not None
        assert stale.status_code == 503
        assert stale.json() == {"alive": False, "heartbeat_age_s": health.STALE_AFTER + 1}
        metrics_page = await probe(unused_tcp_port, "/metrics")
        assert metrics_page is not None
        assert "scx_forwarder_tickets_forwarded_total" in metrics_page.text
    finally:
        await runner.cleanup()


def ready_when(up: Callable[[], bool]) -> health.Readiness:
    return health.Readiness(connected=up, consuming=up, token=lambda: (True, "held"))


async def test_readyz_asks_the_providers_the_service_handed_over(unused_tcp_port: int) -> None:
    connected, consuming = [False], [True]
    token = (False, "the API refused the refresh token (HTTP 401)")
    readiness = health.Readiness(
        connected=lambda: connected[0], consuming=lambda: consuming[0], token=lambda: token
    )
    runner = web.AppRunner(health.make_app(health.Heartbeat(), readiness))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        down = await probe(unused_tcp_port, "/readyz")
        assert down is not None
        assert down.status_code == 503
        # Not connected means not consuming either, whatever the consumer says.
        assert down.json()["checks"] == {
            "broker": {"ok": False, "detail": "not connected"},
            "consumer": {"ok": False, "detail": "not consuming"},
            "token": {"ok": False, "detail": "the API refused the refresh token (HTTP 401)"},
        }
        connected[0], token = True, (True, "held, expires in 60 s")
        assert await answers(unused_tcp_port, "/readyz", 200)
        consuming[0] = False  # draining
        assert await answers(unused_tcp_port, "/readyz", 503)
    finally:
        await runner.cleanup()
