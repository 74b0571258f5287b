"""worker.core.runtime: what SIGTERM/SIGINT do to a service, and the exit code it ends with.

Real signals to this process: the runtime installs its handlers on the running loop, so
``os.kill(os.getpid(), SIGTERM)`` reaches them as the kubelet's would.
"""

from __future__ import annotations

import asyncio
import os
import signal

import aiormq
import pytest
from structlog.testing import capture_logs

from tests.support.polling import wait_for
from worker.amqp.errors import BROKER_ERRORS, BROKER_GONE, ended_by
from worker.core.errors import EXIT_CREDENTIALS, EXIT_FAILED, EXIT_OK, CredentialsRejected
from worker.core.runtime import Shutdown, until_signalled


class Service:
    """Works until asked to stop, then takes ``drain_s`` to finish (forever if None)."""

    def __init__(self, drain_s: float | None = 0.0) -> None:
        self.drain_s = drain_s
        self.started = asyncio.Event()
        self.stopping = asyncio.Event()
        self.abandoned = 0
        self.exit_code = EXIT_OK

    async def run(self) -> int:
        self.started.set()
        await self.stopping.wait()
        if self.drain_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.drain_s or 0)
        return 7  # what the service says, passed through

    def shutdown(self, grace: float | None = None) -> Shutdown:
        def abandon() -> None:
            self.abandoned += 1

        return Shutdown(
            drain=self.stopping.set,
            abandon=abandon,
            grace=grace,
            exit_code=lambda: self.exit_code,
            abandoned="test: work abandoned",
        )


async def started(service: Service, sig: signal.Signals = signal.SIGTERM) -> None:
    await service.started.wait()
    os.kill(os.getpid(), sig)


async def test_the_first_signal_drains_and_the_service_says_the_exit_code() -> None:
    service = Service()
    with capture_logs() as logs:
        signalled = asyncio.ensure_future(started(service))
        assert await until_signalled(service.run(), service.shutdown()) == 7
        await signalled
    assert service.abandoned == 0
    assert [e["event"] for e in logs] == ["worker.signal"]
    assert logs[0]["signal"] == "SIGTERM"
    # The handlers are gone with the service: the loop no longer owns the signal.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_a_second_signal_abandons_the_work_in_hand() -> None:
    service = Service(drain_s=None)
    with capture_logs() as logs:
        running = asyncio.ensure_future(until_signalled(service.run(), service.shutdown()))
        await started(service, signal.SIGINT)
        await wait_for(service.stopping.is_set, what="the drain to start")
        os.kill(os.getpid(), signal.SIGINT)
        assert await running == EXIT_OK
    assert service.abandoned == 1
    cancelled = [e for e in logs if e["event"] == "worker.cancelled"]
    assert cancelled == [
        {"event": "worker.cancelled", "log_level": "warning", "detail": "test: work abandoned"}
    ]


async def test_past_the_grace_the_drain_is_abandoned_as_at_a_second_signal() -> None:
    service = Service(drain_s=None)
    service.exit_code = EXIT_FAILED
    running = asyncio.ensure_future(until_signalled(service.run(), service.shutdown(grace=0.05)))
    await started(service)
    assert await running == EXIT_FAILED
    assert service.abandoned == 1


async def test_a_fatal_error_ends_with_its_own_exit_code() -> None:
    async def refused() -> int:
        raise CredentialsRejected(401, [])

    with capture_logs() as logs:
        assert await until_signalled(refused(), Service().shutdown()) == EXIT_CREDENTIALS
    assert [e["event"] for e in logs] == ["worker.fatal"]


async def test_without_a_shutdown_the_first_signal_stops_it_with_exit_0() -> None:
    began = asyncio.Event()

    async def forever() -> int:
        began.set()
        await asyncio.Event().wait()
        return EXIT_FAILED

    running = asyncio.ensure_future(until_signalled(forever(), None))
    await began.wait()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await running == EXIT_OK


@pytest.mark.parametrize(
    "error",
    [
        aiormq.exceptions.ChannelInvalidStateError("writer is None"),
        aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED"),
        ConnectionRefusedError(111, "Connect call failed"),
        TimeoutError(),
    ],
)
async def test_every_broker_error_ends_a_service_with_exit_1(error: BaseException) -> None:
    """``run`` used to miss ``ChannelInvalidStateError`` (issue 19): one vocabulary now."""
    assert isinstance(error, BROKER_GONE)

    async def lost() -> int:
        raise error

    shutdown = Shutdown(
        drain=lambda: None,
        exit_code=lambda: EXIT_OK,
        abandoned="",
        failed=lambda exc: ended_by(exc, broker="amqp://node/", topology={"queue": "q"}),
    )
    with capture_logs() as logs:
        assert await until_signalled(lost(), shutdown) == EXIT_FAILED
    assert [(e["event"], e["broker"]) for e in logs] == [
        ("worker.broker_unreachable", "amqp://node/")
    ]


def test_a_refusal_is_told_apart_from_a_loss() -> None:
    refused = aiormq.exceptions.ChannelPreconditionFailed("PRECONDITION_FAILED - x-queue-type")
    with capture_logs() as logs:
        assert ended_by(refused, broker="b", topology={"queue": "q", "hint": "h"}) == EXIT_FAILED
    assert logs[0]["event"] == "worker.topology_mismatch"
    assert (logs[0]["queue"], logs[0]["hint"]) == ("q", "h")
    assert ended_by(ValueError("not the broker"), broker="b", topology={}) is None
    assert issubclass(aiormq.exceptions.PublishError, BROKER_ERRORS)
