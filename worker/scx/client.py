"""The SCX Channel API client: send one ticket, classify the answer, retry what is transient.

One ``ScxClient`` (and so one ``httpx.AsyncClient`` with one keep-alive pool) per process.
``send_ticket`` either returns ``Forwarded`` or raises one of

- ``TicketRejected``: a non-retryable 4xx; the API's ``errorList`` and status go along;
- ``RetryLater``: 408/425/429/5xx, timeouts or connection errors outlasted the in-process
  budget (``SCX_RETRY_ATTEMPTS`` attempts or ``SCX_RETRY_BUDGET`` seconds, whichever ends
  first), or the circuit breaker held the call back past it; waits grow exponentially
  with full jitter and never undercut the server's own ``Retry-After`` / rate-limit hint;
- ``CredentialsRejected``: the refresh token was refused; the worker stops.

Classification lives in ``classify`` alone. Every call first takes its turn from the
``Pacer`` (the rate limit) and the ``Breaker`` (outages); both are per process and shared
by all messages, so a 429 or an outage slows the whole process down at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from worker import metrics
from worker.errors import CircuitOpen, RetryLater, TicketRejected, TransientError
from worker.scx.auth import TokenAuth
from worker.scx.breaker import Breaker
from worker.scx.pacing import Pacer
from worker.scx.responses import error_list, is_transient_status, rate_limit, retry_after
from worker.scx.waits import Waits
from worker.settings import Settings

log = structlog.get_logger(__name__)

TICKET_PATH = "/v1/channel/ticket"


@dataclass(frozen=True, slots=True)
class Forwarded:
    status: int
    attempts: int


def classify(response: httpx.Response) -> int:
    """Return the status of an accepted ticket; raise for everything else."""
    status = response.status_code
    if status < 300:
        return status
    if is_transient_status(status) or status == httpx.codes.UNAUTHORIZED:
        # A 401 here already survived one refresh and resend in TokenAuth: a token the API
        # just issued and then refused says nothing about this ticket, so it is not the
        # ticket's fault and must not dead-letter it as "rejected".
        raise TransientError(
            f"HTTP {status}",
            status=status,
            retry_after=retry_after(response),
            error_list=error_list(response),
        )
    raise TicketRejected(status, error_list(response))


class ScxClient:
    def __init__(
        self,
        settings: Settings,
        refresh_token: SecretStr,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        timeout = httpx.Timeout(settings.scx_request_timeout, connect=settings.scx_connect_timeout)
        self.auth = TokenAuth(
            refresh_token,
            auth_url=f"{settings.scx_api_url}/v1/auth",
            timeout=timeout,
            margin=settings.scx_token_refresh_margin,
        )
        self.waits = Waits()
        self.pacer = Pacer(settings.scx_max_requests_per_minute, waits=self.waits)
        self.breaker = Breaker(
            failures=settings.scx_breaker_failures,
            cooldown=settings.scx_breaker_cooldown,
            max_cooldown=settings.scx_breaker_max_cooldown,
            waits=self.waits,
        )
        limits = httpx.Limits(
            max_connections=settings.pool_size, max_keepalive_connections=settings.pool_size
        )
        self._http = httpx.AsyncClient(
            base_url=settings.scx_api_url,
            auth=self.auth,
            timeout=timeout,
            event_hooks=metrics.http_hooks(),
            # Everything a ticket call needs, merged once here rather than per request: the
            # auth flow builds its own (form-encoded) request and does not inherit these.
            headers={
                "Accept": "application/json",
                "Accept-Language": "en",
                "Content-Type": "application/json",
            },
            # httpx stays the API (its Auth flow is the token manager); aiohttp carries the
            # bytes. httpcore's pool cost ~2.7 ms of CPU per request in its bookkeeping
            # (profiled: has_expired -> anyio extra attributes on every pool scan), which made
            # more concurrency slower; aiohttp's connector does the same job for a fraction.
            transport=transport or AiohttpTransport(limits=limits),
        )
        # An absolute URL object: httpx skips joining it with base_url on every call (half
        # of build_request's cost, measured).
        self._ticket_url = httpx.URL(settings.scx_api_url + TICKET_PATH)
        # The API sets no cookies, yet httpx builds urllib request/response stand-ins for
        # its cookie jar on every response: 7 % of the worker's CPU in the bench profile.
        self._http._cookies = _NoCookies()
        self._attempts = settings.scx_retry_attempts
        self._budget = settings.scx_retry_budget
        self._backoff = wait_random_exponential(
            multiplier=settings.scx_retry_initial_wait, max=settings.scx_retry_max_wait
        )

    async def __aenter__(self) -> ScxClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    def interrupt_waits(self) -> None:
        """Make sends that wait (slot, pause, breaker, back-off) give up with ``ShuttingDown``."""
        self.waits.interrupt()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def send_ticket(self, body: bytes) -> Forwarded:
        """POST one ticket (already validated JSON) until it is accepted or cannot be now."""
        deadline = time.monotonic() + self._budget
        try:
            # The common case, a first attempt that is answered for good, skips the retry
            # machinery (building and stepping a tenacity loop cost ~5 % of the CPU).
            return Forwarded(await self._post_once(body, 1, deadline), 1)
        except TicketRejected as exc:
            exc.attempts = 1
            raise
        except CircuitOpen as exc:
            raise _retry_later(exc, calls=0) from None
        except TransientError as exc:
            first_failure = exc
        return await self._retry(body, deadline, first_failure)

    async def _retry(self, body: bytes, deadline: float, first: TransientError) -> Forwarded:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(TransientError)
            & retry_if_not_exception_type(CircuitOpen),
            stop=stop_after_attempt(self._attempts)
            | stop_before_delay(deadline - time.monotonic()),
            wait=self._wait,
            sleep=self.waits.sleep,
            before_sleep=_log_retry,
            reraise=True,
        )
        attempt_number = 0
        try:
            async for attempt in retrying:
                attempt_number = attempt.retry_state.attempt_number
                with attempt:
                    if attempt_number == 1:
                        # Replayed, not re-sent: tenacity decides the wait and logs it
                        # exactly as if it had made the first call itself.
                        raise first
                    status = await self._post_once(body, attempt_number, deadline)
                    return Forwarded(status, attempt_number)
        except TicketRejected as exc:
            exc.attempts = attempt_number
            raise
        except TransientError as exc:
            raise _retry_later(exc, calls=attempt_number - isinstance(exc, CircuitOpen)) from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _post_once(self, body: bytes, attempt: int, deadline: float) -> int:
        probe = await self.breaker.admit(deadline)
        answered = False
        try:
            seq = await self.pacer.acquire()
            structlog.contextvars.bind_contextvars(attempt=attempt)
            sent_at = time.monotonic()
            try:
                response = await self._http.post(self._ticket_url, content=body)
            except httpx.TimeoutException as exc:
                answered = True
                self.breaker.failed(probe)
                raise TransientError(f"timeout ({type(exc).__name__})") from None
            except httpx.TransportError as exc:
                answered = True
                self.breaker.failed(probe)
                raise TransientError(f"connection error ({type(exc).__name__}: {exc})") from None
            except TransientError:  # POST /v1/auth failed: the API is as down as the route
                answered = True
                self.breaker.failed(probe)
                raise
            answered = True
            self._take_in(response, seq, sent_at, probe)
            return classify(response)
        finally:
            if not answered:
                self.breaker.abandoned(probe)

    def _take_in(self, response: httpx.Response, seq: int, sent_at: float, probe: bool) -> None:
        """Tell the pacer and the breaker what this answer says about the API."""
        status = response.status_code
        if (limit := rate_limit(response)) is not None:
            # Read once here, for the pacer and the metric alike.
            refused = status == httpx.codes.TOO_MANY_REQUESTS
            self.pacer.observe(seq, limit, sent_at=sent_at, refused=refused)
            metrics.rate_limit_remaining(limit.remaining)
        if status == httpx.codes.TOO_MANY_REQUESTS:
            # Everyone in this process waits out the limit, not just this message.
            wait = retry_after(response)
            if wait is None:
                end = self.pacer.window_end()
                wait = end - time.monotonic() if end is not None else self.pacer.interval or 1.0
            self.pacer.pause_for(wait)
            self.breaker.succeeded(probe)  # the API is up; it only wants us slower
        elif status >= 500 or status == httpx.codes.REQUEST_TIMEOUT:
            self.breaker.failed(probe)
        else:
            self.breaker.succeeded(probe)

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        hint = exc.retry_after if isinstance(exc, TransientError) else None
        return max(backoff, hint or 0.0)


def _retry_later(exc: TransientError, *, calls: int) -> RetryLater:
    return RetryLater(calls, exc.reason, {"status": exc.status, "errorList": exc.error_list or []})


class _NoCookies(httpx.Cookies):
    """A cookie jar that ignores ``Set-Cookie``: nothing of the API's state lives in one."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    fields: dict[str, Any] = {"attempt": state.attempt_number}
    if state.next_action is not None:
        fields["wait_s"] = round(state.next_action.sleep, 3)
    if isinstance(exc, TransientError):
        fields.update(reason=exc.reason, status=exc.status)
    metrics.retried(exc)
    log.warning("scx.retry", **fields)
