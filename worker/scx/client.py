"""The SCX Channel API client: the routes, one call path, retries of what is transient.

One ``ScxClient`` (and so one ``httpx.AsyncClient`` with one keep-alive pool) per process.
Every route is a ``Call`` made through ``ScxClient.call``: the same breaker, pacing slot,
token, retry budget and error mapping for each. ``send_ticket`` either returns
``Forwarded`` or raises one of

- ``TicketRejected``: a non-retryable 4xx; the API's ``errorList`` and status go along;
- ``RetryLater``: 408/425/429/5xx, timeouts or connection errors outlasted the in-process
  budget (``SCX_RETRY_ATTEMPTS`` attempts or ``SCX_RETRY_BUDGET`` seconds, whichever ends
  first), or the circuit breaker held the call back past it; waits grow exponentially
  with full jitter and never undercut the server's own ``Retry-After`` / rate-limit hint;
- ``CredentialsRejected``: the refresh token was refused; the worker stops.

``409 Conflict`` to a ticket is returned as ``Forwarded(409)`` with the API's ``errorList``:
what it means is the caller's to decide, since ``ticketId`` names a conversation and what the
API answers to a repeated one is unconfirmed (``worker.forward.delivery.create_ticket`` and
docs/guides/conversations.md, "The 409 rule").

``upload_attachment`` sends one file as ``multipart/form-data`` through the same path; a
non-retryable 4xx raises ``UploadRejected`` with the status and ``errorList``. The file is
streamed from its spooled copy on every attempt (``_FileBody``), never read whole.

Classification of answers lives in ``classify`` alone. Every call first takes its
turn from the ``Breaker`` (outages, per process) and from the ``Pacer`` of its route's
category (``worker.scx.routes``: one window per category, as the API counts them); both are
shared by all messages, so an outage slows the whole process down at once, and a 429 the
routes of its category (a 429 on the seller-event routes leaves the tickets alone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, TypeVar, cast

import httpx
import orjson
import structlog
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr
from tenacity import (
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
)

from worker import USER_AGENT
from worker.core.errors import (
    CircuitOpen,
    MessageError,
    RequestRejected,
    RetryLater,
    TicketRejected,
    TransientError,
    UploadRejected,
)
from worker.core.retry import Backoff, is_transient_status, retrying
from worker.core.settings import Settings
from worker.core.spool import Spooled, TooLarge, spool
from worker.obs import metrics, tracing
from worker.scx.auth import TokenAuth
from worker.scx.breaker import Breaker
from worker.scx.instrumentation import Instrumentation
from worker.scx.pacing import Pacer
from worker.scx.responses import error_list, rate_limit, retry_after
from worker.scx.routes import WINDOWS, Category, category_of
from worker.scx.waits import Waits

log = structlog.get_logger(__name__)

TICKET_PATH = "/v1/channel/ticket"
EVENTS_PATH = "/v1/channel/event"
ATTACHMENT_PATH = "/v1/channel/ticket/attachment"
# DELETE /v1/channel/event takes 1 to 100 ids per call.
MAX_ACK_IDS = 100


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Forwarded:
    status: int
    attempts: int
    error_list: tuple[Any, ...] = ()
    """The API's ``errorList`` of a ``409``: the forwarder decides whether the conflict is its
    own ticket (``worker.forward.delivery``) and dead-letters it with this list if not."""


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A file the API will not hand out (a 404, another 4xx, or too large): a permanent answer.

    ``detail`` says why, as the events bridge publishes it: ``{"status": 404}``, or
    ``{"status": 413, "reason": "too_large", "max_bytes": N}`` for a file over the limit.
    """

    detail: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Uploaded:
    status: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One API call as the retry loop sees it.

    ``build`` makes the request afresh for every attempt (a file body is re-read from its
    start); ``read`` turns the answer into a value or raises (see ``ScxClient.call``);
    with ``stream`` the body is left unread for ``read`` to stream, and closed after it.
    """

    build: Callable[[], httpx.Request]
    read: Callable[[httpx.Response], Awaitable[T]]
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Answered(Generic[T]):
    value: T
    attempts: int
    """Calls made, the answered one included."""


def classify(
    response: httpx.Response,
    rejected: Callable[[int, list[Any]], MessageError] = TicketRejected,
) -> int:
    """Return the status of an accepted call; raise for everything else.

    Transient answers raise ``TransientError``; every other status raises ``rejected``
    (``TicketRejected`` unless the route says otherwise) with the API's ``errorList``.
    A ticket's ``409 Conflict`` is returned, not raised: the ticket exists already.
    """
    status = response.status_code
    if status < 300 or (status == httpx.codes.CONFLICT and rejected is TicketRejected):
        return status
    _raise_if_transient(response)
    raise rejected(status, error_list(response))


def _raise_if_transient(response: httpx.Response) -> None:
    """``TransientError`` for an answer another attempt may cure, on every route."""
    status = response.status_code
    if is_transient_status(status) or status == httpx.codes.UNAUTHORIZED:
        # A 401 here already survived one refresh and resend in TokenAuth: a token the API
        # just issued and then refused says nothing about this request, so it is not the
        # request's fault and must not end it as "rejected".
        raise TransientError(
            f"HTTP {status}",
            status=status,
            retry_after=retry_after(response),
            error_list=error_list(response),
        )


class ScxClient:
    def __init__(
        self,
        settings: Settings,
        refresh_token: SecretStr,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        background: bool = False,
    ) -> None:
        """``background``: this process calls the channel category (tickets, uploads,
        downloads) seldom beside busier callers on the same credential (the events bridge's
        downloads beside the workers); see ``Pacer``. Its other categories (the bridge's
        polls and acknowledgements) are paced at their full rate."""
        timeout = httpx.Timeout(settings.scx_request_timeout, connect=settings.scx_connect_timeout)
        self.instrumentation = Instrumentation()
        self.auth = TokenAuth(
            refresh_token,
            auth_url=f"{settings.scx_api_url}/v1/auth",
            timeout=timeout,
            margin=settings.scx_token_refresh_margin,
        )
        self.auth.on_refreshed = self.instrumentation.token_refreshed
        self.waits = Waits()
        self.pacers: dict[Category, Pacer] = {
            category: Pacer(
                _per_minute(settings, category),
                waits=self.waits,
                background=background and category == "channel",
                counting=settings.scx_rate_counting,
                category=category,
            )
            for category in WINDOWS
        }
        self.pacer = self.pacers["channel"]
        """The channel category's pacer (tickets, uploads, downloads)."""
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
            event_hooks=self.instrumentation.hooks(),
            # Everything a ticket call needs, merged once here rather than per request: the
            # auth flow builds its own (form-encoded) request and does not inherit these.
            headers={
                "Accept": "application/json",
                "Accept-Language": "en",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            # httpx stays the API (its Auth flow is the token manager); aiohttp carries the
            # bytes. httpcore's pool cost ~2.7 ms of CPU per request in its bookkeeping
            # (profiled: has_expired -> anyio extra attributes on every pool scan), which made
            # more concurrency slower; aiohttp's connector does the same job for a fraction.
            # Traced here, below the auth flow and the retries, when tracing is on: a client
            # span and a traceparent for every request on the wire (worker.obs.tracing).
            transport=tracing.traced_transport(transport or AiohttpTransport(limits=limits)),
        )
        # An absolute URL object: httpx skips joining it with base_url on every call (half
        # of build_request's cost, measured).
        self._ticket_url = httpx.URL(settings.scx_api_url + TICKET_PATH)
        self._events_url = httpx.URL(settings.scx_api_url + EVENTS_PATH)
        self._attachment_url = httpx.URL(settings.scx_api_url + ATTACHMENT_PATH)
        # The API sets no cookies, yet httpx builds urllib request/response stand-ins for
        # its cookie jar on every response: 7 % of the worker's CPU in the bench profile.
        self._http._cookies = _NoCookies()
        self._settings = settings
        self._wait = Backoff(settings)

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
        answered = await self.call(
            Call(
                lambda: self._http.build_request("POST", self._ticket_url, content=body),
                _ticket_status,
            )
        )
        status, errors = answered.value
        return Forwarded(status, answered.attempts, errors)

    # --- seller events (scx-forwarder events) -----------------------------------------

    async def poll_events(self, limit: int) -> list[Any]:
        """``GET /v1/channel/event?limit=``: the ``eventList`` items as the API sent them."""
        url = self._events_url
        answered = await self.call(
            Call(lambda: self._http.build_request("GET", url, params={"limit": limit}), _events)
        )
        return answered.value

    async def ack_events(self, event_ids: Sequence[str]) -> int:
        """``DELETE /v1/channel/event`` in batches of at most 100 ids; returns the calls made.

        Raises (``RetryLater``, ``RequestRejected``, ...) at the first batch that fails; the
        batches before it stay acknowledged.
        """
        ids = list(event_ids)
        calls = 0
        for start in range(0, len(ids), MAX_ACK_IDS):
            body = orjson.dumps({"eventIdList": ids[start : start + MAX_ACK_IDS]})
            await self.call(Call(self._delete_events(body), _acknowledged))
            calls += 1
        return calls

    def _delete_events(self, body: bytes) -> Callable[[], httpx.Request]:
        return lambda: self._http.build_request("DELETE", self._events_url, content=body)

    async def download_attachment(
        self, seller_id: str, ticket_id: str, filename: str, *, max_bytes: int, directory: Path
    ) -> Spooled | Unavailable:
        """Stream one file of a seller's reply into a spooled file (at most ``max_bytes``).

        A 4xx other than 401/408/425/429 is a permanent ``Unavailable`` (the file is not
        there, and asking again will not change that), as is a file over ``max_bytes``;
        transient failures are retried like any call and end in ``RetryLater``.
        """
        params = {"sellerId": seller_id, "ticketId": ticket_id, "filename": filename}
        url = self._attachment_url

        async def read(response: httpx.Response) -> Spooled | Unavailable:
            status = response.status_code
            if status >= 300:
                await response.aread()
                if is_transient_status(status) or status == httpx.codes.UNAUTHORIZED:
                    raise TransientError(
                        f"HTTP {status}", status=status, retry_after=retry_after(response)
                    )
                return Unavailable({"status": status})
            try:
                return await spool(response.aiter_bytes(), max_bytes=max_bytes, directory=directory)
            except TooLarge:
                # Refused here, not by the API: 413 says "too large" in HTTP's terms.
                return Unavailable({"status": 413, "reason": "too_large", "max_bytes": max_bytes})

        answered = await self.call(
            Call(lambda: self._http.build_request("GET", url, params=params), read, stream=True)
        )
        return answered.value

    async def upload_attachment(
        self, seller_id: str, ticket_id: str, filename: str, content_type: str, file: IO[bytes]
    ) -> Uploaded:
        """POST one file of an existing ticket until it is stored or cannot be now.

        ``file`` is read from its start on every attempt (and on the token flow's resend
        after a 401), 64 KiB at a time; the caller keeps it open until this returns.
        Raises ``UploadRejected`` for a non-retryable 4xx, else as ``send_ticket``.
        """
        metadata = orjson.dumps(
            {"sellerId": seller_id, "ticketId": ticket_id, "filename": filename}
        )

        def build() -> httpx.Request:
            # The client-wide Content-Type (JSON) would win over the multipart one, so the
            # request names its own, with a boundary httpx then uses for the body.
            boundary = os.urandom(16).hex()
            return self._http.build_request(
                "POST",
                self._attachment_url,
                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
                files={
                    "attachmentData": (None, metadata, "application/json"),
                    "attachment": (filename, cast(IO[bytes], _FileBody(file)), content_type),
                },
            )

        async def read(response: httpx.Response) -> int:
            return classify(
                response,
                lambda status, errors: UploadRejected(status, errors, filename=filename),
            )

        answered = await self.call(Call(build, read))
        metrics.attachment_uploaded()
        return Uploaded(answered.value, answered.attempts)

    async def call(self, call: Call[T]) -> Answered[T]:
        """Make ``call`` until it is answered for good, or raise why it cannot be now.

        Every route goes through here, so pacing, the breaker, the token and the retry
        budget are the same for tickets, uploads, downloads and event polls. ``call.read``
        decides what an answer means: it returns the value, raises ``TransientError`` to
        have the call tried again, or raises anything else to end it (a ``MessageError``
        gets the number of calls made as ``attempts``).
        """
        deadline = time.monotonic() + self._settings.scx_retry_budget
        try:
            # The common case, a first attempt that is answered for good, skips the retry
            # machinery (building and stepping a tenacity loop cost ~5 % of the CPU).
            return Answered(await self._once(call, 1, deadline), 1)
        except MessageError as exc:
            exc.attempts = 1
            raise
        except CircuitOpen as exc:
            raise _retry_later(exc, calls=0) from None
        except TransientError as exc:
            first_failure = exc
        return await self._retry(call, deadline, first_failure)

    async def _retry(self, call: Call[T], deadline: float, first: TransientError) -> Answered[T]:
        attempts = retrying(
            self._settings,
            retry=retry_if_exception_type(TransientError)
            & retry_if_not_exception_type(CircuitOpen),
            seconds_left=deadline - time.monotonic(),
            wait=self._wait,
            sleep=self.waits.sleep,
            before_sleep=_log_retry,
        )
        attempt_number = 0
        try:
            async for attempt in attempts:
                attempt_number = attempt.retry_state.attempt_number
                with attempt:
                    if attempt_number == 1:
                        # Replayed, not re-sent: tenacity decides the wait and logs it
                        # exactly as if it had made the first call itself.
                        raise first
                    value = await self._once(call, attempt_number, deadline)
                    return Answered(value, attempt_number)
        except MessageError as exc:
            exc.attempts = attempt_number
            raise
        except TransientError as exc:
            raise _retry_later(exc, calls=attempt_number - isinstance(exc, CircuitOpen)) from None
        raise AssertionError("unreachable: tenacity either returns or reraises")

    async def _once(self, call: Call[T], attempt: int, deadline: float) -> T:
        """One attempt: a breaker admission, a pacing slot, the request, its answer read."""
        probe = await self.breaker.admit(deadline)
        try:
            request = call.build()
            pacer = self.pacers[category_of(request.url.path)]
            seq = await pacer.acquire()
            structlog.contextvars.bind_contextvars(attempt=attempt)
            sent_at = time.monotonic()
            with _transport_errors():
                response = await self._http.send(request, stream=call.stream)
        except TransientError:
            # No answer at all, or POST /v1/auth failed: the API is as down as the route.
            self.breaker.failed(probe)
            raise
        except BaseException:
            # Never sent (stopping while waiting for a slot) or refused for good
            # (credentials): says nothing about the API's health.
            self.breaker.abandoned(probe)
            raise
        try:
            self._take_in(response, pacer, seq, sent_at, probe)
            with _transport_errors():
                return await call.read(response)
        finally:
            if call.stream:
                await response.aclose()

    def _take_in(
        self, response: httpx.Response, pacer: Pacer, seq: int, sent_at: float, probe: bool
    ) -> None:
        """Tell the route category's pacer and the breaker what this answer says."""
        status = response.status_code
        if (limit := rate_limit(response)) is not None:
            # Read once here, for the pacer and the metric alike.
            refused = status == httpx.codes.TOO_MANY_REQUESTS
            pacer.observe(seq, limit, sent_at=sent_at, refused=refused)
            if pacer is self.pacer:
                # The gauge keeps meaning the tickets' window (the channel category).
                metrics.rate_limit_remaining(limit.remaining)
        if status == httpx.codes.TOO_MANY_REQUESTS:
            # Everyone in this process waits out the limit of this category, not just this
            # message; the other categories have windows of their own.
            wait = retry_after(response)
            if wait is None:
                end = pacer.window_end()
                wait = end - time.monotonic() if end is not None else pacer.interval or 1.0
            pacer.pause_for(wait)
            self.breaker.succeeded(probe)  # the API is up; it only wants us slower
        elif status >= 500 or status == httpx.codes.REQUEST_TIMEOUT:
            self.breaker.failed(probe)
        else:
            self.breaker.succeeded(probe)


async def _ticket_status(response: httpx.Response) -> tuple[int, tuple[Any, ...]]:
    status = classify(response)
    return status, tuple(error_list(response)) if status == httpx.codes.CONFLICT else ()


def _per_minute(settings: Settings, category: Category) -> float:
    """The requests per minute this process keeps to in ``category`` (0: not paced)."""
    match category:
        case "channel":
            return settings.scx_max_requests_per_minute
        case "event":
            return settings.scx_event_requests_per_minute
        case "order":
            return settings.scx_order_requests_per_minute
        case "offer":
            return settings.scx_offer_requests_per_minute
        case "default":
            return settings.scx_default_requests_per_minute
        case _:
            return WINDOWS[category].per_minute


def _answered(response: httpx.Response, route: str) -> None:
    """Raise for an answer that is not a 2xx: transient (retried) or ``RequestRejected``."""
    status = response.status_code
    if status < 300:
        return
    _raise_if_transient(response)
    raise RequestRejected(route, status, error_list(response))


async def _events(response: httpx.Response) -> list[Any]:
    _answered(response, "GET /v1/channel/event")
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    events = payload.get("eventList") if isinstance(payload, dict) else None
    if not isinstance(events, list):
        # The API's answer, not an event, is broken: poll again rather than guess.
        raise TransientError("the event list answer has no eventList array")
    return events


async def _acknowledged(response: httpx.Response) -> None:
    _answered(response, "DELETE /v1/channel/event")


@contextmanager
def _transport_errors() -> Iterator[None]:
    """httpx's ways of getting no (whole) answer, as the one error the retry loop retries."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransientError(f"timeout ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        raise TransientError(f"connection error ({type(exc).__name__}: {exc})") from None


def _retry_later(exc: TransientError, *, calls: int) -> RetryLater:
    return RetryLater(calls, exc.reason, {"status": exc.status, "errorList": exc.error_list or []})


class _FileBody:
    """A spooled file as httpx's multipart encoder reads it: from the start, in chunks.

    Only ``read``, ``seek`` and ``tell``: httpx measures a body by ``fileno()`` when it has
    one, and ``SpooledTemporaryFile.fileno()`` would move a small in-memory file to disk.
    ``seek``/``tell`` give the length instead, and httpx rewinds before each send.
    """

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file

    def read(self, size: int = -1) -> bytes:
        return self._file.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


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
    tracing.event("scx.retry", **fields)
    log.warning("scx.retry", **fields)
