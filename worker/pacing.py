"""Client-side pacing: keep ticket calls under the API's per-minute limit.

Production allows 60 calls to ``/v1/channel*`` per 60 s per channel credential. Rather
than firing and collecting 429s, every send reserves the next free slot on an evenly
spaced grid (``60 / per_minute`` seconds apart), in arrival order. A 429 with a wait hint
pauses every sender of the process at once (``pause_until``), so in-flight messages do
not each spend their own retry on a limit that is already known to be exhausted.

``per_minute == 0`` turns the spacing off; pauses still apply.

All waiting in the send path (for a slot, a pause, a retry back-off) goes through
``sleep``, which ``interrupt`` ends at once with ``ShuttingDown``: on SIGTERM a message
that has not been sent yet goes straight back to the queue instead of holding the drain
up for a minute of pacing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from worker.errors import ShuttingDown


class Pacer:
    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._clock = clock
        self._next_slot = 0.0
        self._paused_until = 0.0
        self._sleepers: set[asyncio.Future[None]] = set()
        self._interrupted = False

    @property
    def interval(self) -> float:
        return self._interval

    async def acquire(self) -> None:
        """Wait for this caller's slot, and for any pause announced meanwhile."""
        if self._interrupted:
            raise ShuttingDown
        now = self._clock()
        slot = max(now, self._next_slot, self._paused_until)
        self._next_slot = slot + self._interval
        if slot > now:
            await self.sleep(slot - now)
        # A loop, not an Event: a later 429 may push the deadline further while we sleep.
        while (wait := self._paused_until - self._clock()) > 0:
            await self.sleep(wait)

    def pause_until(self, deadline: float) -> None:
        """Hold every send until ``deadline`` (monotonic seconds); later deadlines win."""
        if deadline > self._paused_until:
            self._paused_until = deadline
            self._next_slot = max(self._next_slot, deadline)

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock() + seconds)

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that ``interrupt`` ends early with ``ShuttingDown``."""
        if self._interrupted:
            raise ShuttingDown
        loop = asyncio.get_running_loop()
        # A bare future and a timer handle: cheaper per message than a task per wait.
        future: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, future)
        self._sleepers.add(future)
        try:
            await future
        finally:
            timer.cancel()
            self._sleepers.discard(future)

    def interrupt(self) -> None:
        """End every current and future wait with ``ShuttingDown``."""
        self._interrupted = True
        for future in self._sleepers:
            if not future.done():
                future.set_exception(ShuttingDown())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
