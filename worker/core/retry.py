"""The in-process retry rule, one for every retry loop (SCX calls, attachment downloads).

``SCX_RETRY_ATTEMPTS`` tries within ``SCX_RETRY_BUDGET`` seconds, waiting a random
exponential back-off from ``SCX_RETRY_INITIAL_WAIT`` up to ``SCX_RETRY_MAX_WAIT`` between
them, never less than the server's own hint (``Retry-After`` or the rate-limit headers)
that the failure carried. What is retried and what a loop logs stay the caller's.
"""

from __future__ import annotations

from tenacity import RetryCallState, stop_after_attempt, stop_before_delay, wait_random_exponential
from tenacity.stop import stop_base

from worker.core.errors import TransientError
from worker.core.settings import Settings


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
