"""The in-process retry rule, one for every retry loop (SCX calls, attachment downloads).

``SCX_RETRY_ATTEMPTS`` tries within ``SCX_RETRY_BUDGET`` seconds, waiting a random
exponential back-off from ``SCX_RETRY_INITIAL_WAIT`` up to ``SCX_RETRY_MAX_WAIT`` between
them, never less than the server's own hint (``Retry-After`` or the rate-limit headers)
that the failure carried. ``retrying`` builds that loop; what is retried and what a loop
logs stay the caller's.

Which HTTP answers are worth another attempt is the same for the SCX API and for an
attachment's source, so it is said once here too: ``is_transient_status`` and the
``Retry-After`` reader (``retry_after_header``).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base

from worker.core.errors import TransientError
from worker.core.settings import Settings

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests: the request itself was fine.
_TRANSIENT_4XX = frozenset({408, 425, 429})


def is_transient_status(status: int) -> bool:
    """A status another attempt may cure: 408, 425, 429 and every 5xx."""
    return status >= 500 or status in _TRANSIENT_4XX


def retry_after_header(response: httpx.Response) -> float | None:
    """Seconds ``Retry-After`` asks to wait (delta-seconds or an HTTP date); None without."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class Backoff:
    """A tenacity ``wait``: the back-off, or the failure's ``retry_after`` if that is longer."""

    def __init__(self, settings: Settings) -> None:
        self._backoff = wait_random_exponential(
            multiplier=settings.scx_retry_initial_wait, max=settings.scx_retry_max_wait
        )

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after if isinstance(exc, TransientError) else None
        return max(self._backoff(state), hint or 0.0)


def give_up(settings: Settings, seconds_left: float) -> stop_base:
    """A tenacity ``stop``: after ``SCX_RETRY_ATTEMPTS`` tries, or before a wait that would
    end past ``seconds_left`` (what is left of the budget)."""
    return stop_after_attempt(settings.scx_retry_attempts) | stop_before_delay(seconds_left)


def retrying(
    settings: Settings,
    *,
    retry: retry_base,
    seconds_left: float,
    sleep: Callable[[float], Awaitable[None]],
    before_sleep: Callable[[RetryCallState], None],
    wait: Backoff | None = None,
) -> AsyncRetrying:
    """The retry loop: ``retry`` decides what is tried again, within the budget's
    ``seconds_left``; the last failure is re-raised as it is."""
    return AsyncRetrying(
        retry=retry,
        stop=give_up(settings, seconds_left),
        wait=wait or Backoff(settings),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
