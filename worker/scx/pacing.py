"""Client-side pacing: keep ticket calls under the API's limit, alone or beside replicas.

Production allows 60 calls to ``/v1/channel*`` per 60 s per channel credential, and every
replica of the worker shares that budget. There is no coordinator: each process paces
itself from what the API tells every caller, the ``X-RateLimit-Limit``,
``-Remaining`` and ``-Interval-Length-Seconds`` headers.

Two rules decide when the next request of this process may go:

1. **Never faster than** ``SCX_MAX_REQUESTS_PER_MINUTE`` (evenly spaced, in arrival order).
2. **Spread what is left of the window over the time left in it.** With ``R`` calls left
   (as last reported, minus our own calls since) and the window ending at ``E``, the next
   call waits at least ``(E - last) / (R - reserve + 1)``, so the last call of a window
   lands one gap before its end. Alone, this is even pacing at the limit. Beside
   replicas that all follow it, the shared remainder drains in proportion to time left
   and reaches zero only as the window closes, so the replicas converge on the limit
   together. ``reserve`` is what the *other* callers used between two of our
   own answers: that many calls may be in flight elsewhere when we read ``R``, so we
   leave them. At ``R <= reserve`` we wait for the next window.

The window's end is estimated conservatively: a window is known to have started when the
remainder goes *up* (or reads ``limit - 1``), at the latest when that answer arrived,
so ``E = arrival + interval`` errs late, which costs a little idle time, never a 429.
A ``Retry-After`` on a 429 gives ``E`` exactly. A simulation of 1-8 replicas sharing 120
calls per window (fixed windows, 0.5-3 ms latency) gave 100 % of the limit and no 429;
spreading over ``R`` gaps instead of ``R + 1`` lost one call per window (95 % at 20 calls
per window, as ``make bench`` measured before the change).

A 429 pauses every sender of the process (``pause_until``) so that in-flight messages do
not each spend a retry on a limit already known to be exhausted.

``per_minute == 0`` turns pacing off; 429 pauses still apply.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

from worker.scx.responses import RateLimit
from worker.scx.waits import Waits

# What other callers used between two of our answers is capped: a burst seen once
# (answers overtaking each other) must not hold a whole window back.
MAX_RESERVE = 10


class WindowBudget:
    """What this process knows of the API's current rate-limit window (no I/O, no clock)."""

    def __init__(self) -> None:
        self.window_end: float | None = None
        self.remaining: int | None = None
        self.reserve = 0
        self._sent = 0
        self._seen_seq = 0
        self._seen_remaining: int | None = None

    def sent(self) -> int:
        """Count one call of ours; returns its sequence number for ``observe``."""
        self._sent += 1
        if self.remaining is not None:
            self.remaining -= 1
        return self._sent

    def observe(self, seq: int, limit: RateLimit, *, sent_at: float, now: float) -> None:
        """Take in the headers of the answer to call ``seq``, sent at ``sent_at``."""
        if seq <= self._seen_seq:
            return  # an older answer overtaken by a newer one says nothing new
        previous, previous_seq = self._seen_remaining, self._seen_seq
        new_window = (
            self.window_end is None
            or sent_at >= self.window_end
            or (previous is not None and limit.remaining > previous)
            or limit.remaining == limit.limit - 1
        )
        if new_window:
            self.window_end = now + limit.interval
        elif previous is not None:
            others = previous - limit.remaining - (seq - previous_seq)
            if others > 0:
                self.reserve = min(others, MAX_RESERVE)
        self._seen_seq, self._seen_remaining = seq, limit.remaining
        self.remaining = limit.remaining - (self._sent - seq)

    def exhausted_until(self, deadline: float) -> None:
        """A 429: nothing is left until ``deadline``."""
        self.window_end = max(self.window_end or 0.0, deadline)
        self.remaining = 0

    def earliest(self, now: float, last_sent: float) -> float:
        """The earliest time the next call fits this window's budget."""
        if self.window_end is None or self.remaining is None or now >= self.window_end:
            return now  # no budget known, or the window it described is over
        usable = self.remaining - self.reserve
        if usable <= 0:
            return self.window_end
        if last_sent == -math.inf:
            return now
        # usable + 1 gaps for usable calls: the last one lands a gap before the window
        # closes, not on its edge, where it would open (and spend) the next window.
        return max(now, last_sent + (self.window_end - last_sent) / (usable + 1))


class Pacer:
    def __init__(
        self,
        per_minute: float,
        *,
        waits: Waits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self._waits = waits or Waits()
        self._clock = clock
        self._budget = WindowBudget()
        self._last_sent = -math.inf
        self._paused_until = 0.0
        # Senders take their turn in arrival order; only the head waits on the clock, so
        # its slot is computed from the freshest headers rather than reserved in advance.
        self._turn = asyncio.Lock()

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def paused_until(self) -> float:
        return self._paused_until

    async def acquire(self) -> int:
        """Wait for this caller's turn; returns the call's number for ``observe``."""
        self._waits.raise_if_interrupted()
        if not self._interval:
            while (wait := self._paused_until - self._clock()) > 0:
                await self._waits.sleep(wait)
            return 0
        async with self._turn:
            self._waits.raise_if_interrupted()
            # A loop: a 429 or new headers may move the slot while the head waits.
            while (wait := self._next_slot(now := self._clock()) - now) > 0:
                await self._waits.sleep(wait)
            self._last_sent = now
            return self._budget.sent()

    def observe(self, seq: int, limit: RateLimit, *, sent_at: float) -> None:
        """Adapt to the rate-limit headers of the answer to call ``seq``."""
        if self._interval and seq:
            self._budget.observe(seq, limit, sent_at=sent_at, now=self._clock())

    def pause_until(self, deadline: float) -> None:
        """Hold every send until ``deadline`` (monotonic seconds); later deadlines win."""
        if deadline > self._paused_until:
            self._paused_until = deadline
            self._budget.exhausted_until(deadline)

    def pause_for(self, seconds: float) -> None:
        self.pause_until(self._clock() + seconds)

    def window_end(self) -> float | None:
        """When the current rate-limit window ends, if the headers told us."""
        end = self._budget.window_end
        return end if end is not None and end > self._clock() else None

    def _next_slot(self, now: float) -> float:
        return max(
            self._last_sent + self._interval,
            self._paused_until,
            self._budget.earliest(now, self._last_sent),
        )
