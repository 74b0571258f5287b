"""A circuit breaker: one brake for the whole process when the API is down.

Without it, every in-flight message retries on its own during an outage: sixteen
concurrent messages with six attempts each are close to a hundred calls to an API that
is known to be failing. With it:

- **closed**: calls go through. ``SCX_BREAKER_FAILURES`` transient failures in a row
  (5xx, 408, timeouts, connection errors; not 429, which the pacer handles, and not 4xx,
  which says the API is up) open it;
- **open**: no call goes out for ``SCX_BREAKER_COOLDOWN`` seconds. Senders wait, but
  only as long as their in-process retry budget allows; then ``CircuitOpen`` sends the
  message to the delay stage instead of keeping it in memory;
- **half-open**: exactly one call (the probe) goes out. Its success closes the breaker
  and wakes every waiter; its failure opens it again for twice as long, up to
  ``SCX_BREAKER_MAX_COOLDOWN``.

Any answer that is not a transient failure counts as success, including a 4xx that
rejects one ticket: the API is up.

The state is exported as ``scx_forwarder_circuit_state{state}`` (one per process: one
breaker per process) and each opening counts in ``scx_forwarder_circuit_opened_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

import structlog

from worker.core.errors import CircuitOpen
from worker.obs import metrics
from worker.scx.waits import Waits

log = structlog.get_logger(__name__)


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Breaker:
    def __init__(
        self,
        *,
        failures: int,
        cooldown: float,
        max_cooldown: float,
        waits: Waits,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failures
        self._base_cooldown = cooldown
        self._max_cooldown = max(max_cooldown, cooldown)
        self._waits = waits
        self._clock = clock
        self._state = State.CLOSED
        metrics.circuit_state(State.CLOSED.value)
        self._failures = 0
        self._cooldown = cooldown
        self._open_until = 0.0
        self._probing = False

    async def admit(self, deadline: float) -> bool:
        """Wait until a call may go out, at most until ``deadline``; True for the probe.

        Raises ``CircuitOpen`` when the breaker will not let a call out before ``deadline``.
        """
        while True:
            self._waits.raise_if_interrupted()
            now = self._clock()
            if self.state is State.CLOSED:
                return False
            if self.state is State.OPEN:
                if now < self._open_until:
                    if self._open_until > deadline:
                        raise CircuitOpen(self._open_until - now)
                    await self._waits.sleep(self._open_until - now)
                    continue
                self.state = State.HALF_OPEN
            if not self._probing:
                self._probing = True
                log.info("scx.circuit_probe")
                return True
            if now >= deadline:
                raise CircuitOpen(self._cooldown)
            await self._waits.until_notified(deadline - now)

    def succeeded(self, probe: bool) -> None:
        if probe:
            self._probing = False
        if self.state is not State.CLOSED:
            log.info("scx.circuit_closed")
            self.state = State.CLOSED
            self._cooldown = self._base_cooldown
            self._waits.notify_all()
        self._failures = 0

    def failed(self, probe: bool) -> None:
        if probe:
            self._probing = False
            self._open(min(self._cooldown * 2, self._max_cooldown))
        elif self.state is State.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open(self._base_cooldown)

    def abandoned(self, probe: bool) -> None:
        """The call ended without an answer that says anything (shutdown, cancellation)."""
        if probe:
            self._probing = False
            self._waits.notify_all()  # let another waiter probe

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        # Every transition goes through here, so scx_forwarder_circuit_state cannot lag.
        self._state = state
        metrics.circuit_state(state.value)

    def _open(self, cooldown: float) -> None:
        self._cooldown = cooldown
        self._open_until = self._clock() + cooldown
        self.state = State.OPEN
        metrics.circuit_opened()
        log.warning("scx.circuit_opened", cooldown_s=round(cooldown, 3), failures=self._failures)
        self._waits.notify_all()  # half-open waiters go back to waiting for the cooldown
