"""The emulator's rate limiters: three ways an API may count "L calls per I seconds".

JTL documents the limit and its headers but not the algorithm behind them, so the emulator
offers each one a real API might use (``--rate-algorithm``):

- ``fixed``: a window of ``interval`` seconds opens with the first call after the previous
  one ended and admits ``limit`` calls; everything resets when it ends;
- ``sliding``: a call counts until ``interval`` seconds after it was admitted; a call is
  admitted while fewer than ``limit`` admitted calls are that recent;
- ``bucket``: a token bucket of capacity ``limit`` (full at the start), refilled continuously
  at ``limit / interval`` tokens a second; each admitted call takes one token.

Only admitted calls count; a 429 costs nothing. ``Remaining`` is what the algorithm would
still admit at that instant (after the call itself): calls left in the window, ``limit`` minus
the recent calls, or the whole tokens in the bucket. ``retry_after`` of a refused call is the
time until the algorithm admits one again.

Every call also falls in a **period**, a bookkeeping interval for the emulator's records
(``state.rate_windows``): a period of ``interval`` seconds opens with the first call after the
previous one ended. For ``fixed`` it is the window itself; for the others it only groups the
calls, so that a run shows per interval what was asked, admitted and refused.

With ``category_limits`` the emulator keeps **one limiter per route category**, as JTL
counts (``CATEGORY_LIMITS``: tickets, uploads and downloads 60, seller events 240, orders 600,
offers 1,500, everything else, ``/v1/auth`` among it, 10 per interval); without it, one
limiter for every ``/v1/channel*`` route, as before.

Pure: the clock is passed in (seconds, any origin), nothing here does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, get_args

Algorithm = Literal["fixed", "sliding", "bucket"]
ALGORITHMS: tuple[Algorithm, ...] = get_args(Algorithm)
# Float sums of refills must not refuse a call that is due to the microsecond.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    remaining: int  # what X-RateLimit-Remaining reports with this answer
    retry_after: float | None  # seconds until a call is admitted again (refused calls only)
    period_start: float  # when the bookkeeping period of this call began


class Limiter:
    """One limit (``limit`` calls per ``interval`` seconds) counted by one algorithm."""

    def __init__(self, algorithm: Algorithm, limit: int, interval: float) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        if limit < 1 or interval <= 0:
            raise ValueError("limit must be at least 1 and interval positive")
        self.algorithm: Algorithm = algorithm
        self.limit = limit
        self.interval = interval
        self._period_start: float | None = None
        self._window_used = 0  # fixed: calls admitted in the current window
        self._recent: deque[float] = deque()  # sliding: when each counted call was admitted
        self._tokens = float(limit)  # bucket
        self._filled_at: float | None = None

    def take(self, now: float) -> Decision:
        """Count one call at ``now``: admitted or refused, and what the headers say."""
        period = self._period(now)
        if self.algorithm == "fixed":
            admitted = self._window_used < self.limit
            self._window_used += admitted
        elif self.algorithm == "sliding":
            admitted = len(self._recent) < self.limit
            if admitted:
                self._recent.append(now)
        else:
            admitted = self._tokens >= 1 - _EPSILON
            if admitted:
                self._tokens = max(0.0, self._tokens - 1)
        retry = None if admitted else self._wait(now)
        return Decision(admitted, self._remaining(), retry, period)

    def peek(self, now: float) -> int:
        """``Remaining`` at ``now`` without counting a call (answers that skip the limit)."""
        self._expire(now)
        if self.algorithm == "fixed" and self._window_over(now):
            return self.limit
        return self._remaining()

    def _period(self, now: float) -> float:
        if self._window_over(now):
            self._period_start = now
            self._window_used = 0
        self._expire(now)
        assert self._period_start is not None
        return self._period_start

    def _window_over(self, now: float) -> bool:
        start = self._period_start
        return start is None or now >= start + self.interval

    def _expire(self, now: float) -> None:
        """Bring the sliding log and the bucket up to ``now``."""
        recent = self._recent
        while recent and recent[0] + self.interval <= now:
            recent.popleft()
        if self._filled_at is not None and now > self._filled_at:
            rate = self.limit / self.interval
            self._tokens = min(float(self.limit), self._tokens + (now - self._filled_at) * rate)
        if self._filled_at is None or now > self._filled_at:
            self._filled_at = now

    def _remaining(self) -> int:
        if self.algorithm == "fixed":
            return max(0, self.limit - self._window_used)
        if self.algorithm == "sliding":
            return self.limit - len(self._recent)
        return math.floor(self._tokens + _EPSILON)

    def _wait(self, now: float) -> float:
        if self.algorithm == "fixed":
            assert self._period_start is not None
            return self._period_start + self.interval - now
        if self.algorithm == "sliding":
            return self._recent[0] + self.interval - now
        return max(0.0, (1 - self._tokens) * self.interval / self.limit)


# --- one window per route category -----------------------------------------------------------

# JTL's route categories as the emulator's routes fall into them (the emulator's own reading
# of API-FACTS.md; it imports nothing of the client's ``worker.scx.routes``).
Category = Literal["channel", "event", "order", "offer", "default"]
ROUTE_CATEGORY: dict[str, Category] = {
    "ticket": "channel",
    "upload": "channel",
    "download": "channel",
    "events": "event",
    "auth": "default",
}
# JTL's production limits per 60 s: what ``category_limits`` applies unless told otherwise.
CATEGORY_LIMITS: dict[Category, int] = {
    "channel": 60,
    "event": 240,
    "order": 600,
    "offer": 1500,
    "default": 10,
}
