"""Every wait in the send path, in one place, so that shutdown can end them all at once.

A message waiting for a pacing slot, a rate-limit pause, the circuit breaker or a retry
back-off has not been sent yet. On SIGTERM it should go straight back to the queue rather
than hold the drain up: ``interrupt`` ends every current and future wait with
``ShuttingDown``.
"""

from __future__ import annotations

import asyncio

from worker.core.errors import ShuttingDown


class Waits:
    def __init__(self) -> None:
        self._sleepers: set[asyncio.Future[bool]] = set()
        self._listeners: set[asyncio.Future[bool]] = set()
        self._interrupted = False

    @property
    def pending(self) -> int:
        """How many waits are in progress (tests wait for their senders to get here)."""
        return len(self._sleepers) + len(self._listeners)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that ``interrupt`` ends early with ``ShuttingDown``."""
        await self._wait(self._sleepers, seconds)

    async def until_notified(self, seconds: float) -> bool:
        """Wait for ``notify_all`` at most ``seconds``; True if it came."""
        return await self._wait(self._listeners, seconds)

    def raise_if_interrupted(self) -> None:
        if self._interrupted:
            raise ShuttingDown

    def notify_all(self) -> None:
        for future in self._listeners:
            if not future.done():
                future.set_result(True)

    def interrupt(self) -> None:
        self._interrupted = True
        for future in self._sleepers | self._listeners:
            if not future.done():
                future.set_exception(ShuttingDown())

    async def _wait(self, into: set[asyncio.Future[bool]], seconds: float) -> bool:
        self.raise_if_interrupted()
        loop = asyncio.get_running_loop()
        # A bare future and a timer handle: cheaper per message than a task per wait.
        future: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(max(seconds, 0.0), _time_up, future)
        into.add(future)
        try:
            await future
        finally:
            timer.cancel()
            into.discard(future)
        return future.result()


def _time_up(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
