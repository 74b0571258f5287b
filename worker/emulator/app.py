"""A local stand-in for JTL's SCX Channel API, for the demo and for end-to-end tests.

Emulated: ``POST /v1/auth`` (form-encoded ``refreshToken`` in, an opaque bearer token with a
configurable lifetime out) and ``POST /v1/channel/ticket`` (bearer check, then the body is
validated against ``ticket.schema.json``, written from API-FACTS.md independently of our own
models so that it catches their mistakes; a valid ticket gets 201 and is recorded). Errors come
as ``{"errorList": [...]}``, German unless ``Accept-Language: en``.

Faults, all switchable at run time (``Emulator.configure`` / ``inject`` / ``revoke_tokens``,
or the control routes), each taking effect with the next request:

- **outage**: every call (ticket and auth) is answered with ``outage_status`` (503; a 429
  carries the ``X-RateLimit-*`` headers), or with ``outage_mode="drop"`` its connection is
  closed without an answer. Each outage is recorded (``state.outages``): calls answered while
  it lasted, per status (0 = dropped), and the seconds from its end to the next accepted ticket;
- **rate limit**: ``rate_limit`` calls per ``rate_interval`` seconds, shared by every
  ``/v1/channel*`` route and counted by ``rate_algorithm``: ``fixed`` windows (the default), a
  ``sliding`` window or a token ``bucket`` (``worker.emulator.limits`` says exactly how each
  counts); ``X-RateLimit-Limit``/``-Remaining``/``-Interval-Length-Seconds`` on every answer,
  ``Remaining`` as the algorithm counts it, 429 with ``Retry-After`` (until it admits a call
  again) past the limit; each interval is recorded (``state.rate_windows``: for ``fixed`` the
  window itself, for the others a bookkeeping period of ``rate_interval`` seconds). Changing
  any of the three starts afresh (a new window, an empty log, a full bucket). With
  ``category_limits`` each route category has a window of its own, as JTL counts: the channel
  routes ``rate_limit`` (60 if None), the seller-event routes ``event_rate_limit`` (240),
  ``/v1/auth`` ``default_rate_limit`` (10), ... (``worker.emulator.limits``), each window
  recorded with its ``category``;
- **latency** before every ticket answer; **token lifetime** of the tokens issued from then on
  (``revoke_tokens`` ends the current ones); **injected** answers for the next N calls of a
  route; a random **fail rate**.

The ledger (``state.accepted_counts``: ticket id -> accepted POSTs, with ``accepted_total`` and
``duplicates``) costs O(1) per ticket; ``GET /_emulator/state?bodies=0`` leaves the accepted
bodies out of the snapshot, for runs of tens of thousands of tickets.

Every ``/v1/channel*`` route passes one gate (``_gate``): latency, outage, its own fault queue
(``inject(route, ...)``: ``ticket``, ``upload``, ``download``, ``events``; ``auth`` for
``/v1/auth``), the rate limit they share, the bearer token; then the route's own answer.
``POST /v1/channel/ticket/attachment`` (``worker.emulator.uploads``) stores a file for a
ticket accepted before into ``Emulator.files`` (``worker.emulator.files``), and
``GET /v1/channel/ticket/attachment`` serves them. ``GET``/``DELETE /v1/channel/event``
(route ``events``) serve and acknowledge the seller events a test injects
(``Emulator.add_events``, ``POST /_emulator/events``; ``worker.emulator.events``).

A ticket is a conversation (``worker.emulator.tickets``): a post of another message with a
known ``ticketId`` is a follow-up, accepted with 201; a post of the same message again (the
same body) gets 201 and is counted in ``duplicates``, or, with
``conflict_on_repeated_message``, ``409 Conflict``; with ``conflict_on_duplicate`` every post
to a known conversation gets 409, follow-ups included (counted in ``state.conflicts``). What
the real API does is unconfirmed, so the worker is tested against each. An upload of a file
the conversation has under that name overwrites it, or, with ``conflict_on_existing_file``,
gets 409. ``GET /_emulator/tickets`` (or ``/_tickets``) shows the conversations.

Not emulated: JWT contents (tokens are opaque), rate limits on ``/v1/auth`` (inject a 429
instead), sandbox quirks.

Tests drive it through :class:`Emulator`; the demo and out-of-process tests use the control
routes under ``/_emulator/`` (``GET state``; ``POST config``, ``inject``, ``revoke``, ``reset``).
"""

from __future__ import annotations

import asyncio
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from jsonschema import Draft202012Validator, ValidationError

from worker.emulator.answers import english as _english
from worker.emulator.answers import entry as _entry
from worker.emulator.answers import fail as _fail
from worker.emulator.answers import json_response as _json
from worker.emulator.events import EventQueue
from worker.emulator.files import FileStore
from worker.emulator.limits import (
    ALGORITHMS,
    CATEGORY_LIMITS,
    ROUTE_CATEGORY,
    Algorithm,
    Category,
    Decision,
    Limiter,
)
from worker.emulator.tickets import Conversations
from worker.emulator.uploads import UploadRoute

log = structlog.get_logger(__name__)

# Every route has its own fault queue; all but "auth" are /v1/channel* routes, which share one
# rate limit and pass the same gate (latency, outage, faults, rate limit, bearer token).
Route = Literal["auth", "ticket", "upload", "download", "events"]
ROUTES: tuple[Route, ...] = ("auth", "ticket", "upload", "download", "events")
# What a 429 injection reports as X-RateLimit-Limit: JTL's production limits.
_CHANNEL_LIMIT = 60
_AUTH_LIMIT = 10
# A channel route's answer once the gate let the request through; ``headers`` carry the
# rate-limit headers every answer of the route must include.
Answer = Callable[[web.Request, dict[str, str]], Awaitable[web.StreamResponse]]
# Recorded in place of a status for a call whose connection an outage dropped.
DROPPED = 0


@dataclass
class EmulatorConfig:
    # None accepts any non-empty refresh token; a string accepts only that one (to test the
    # "credentials rejected" path).
    refresh_token: str | None = None
    # Of tokens issued from then on; tokens already out keep theirs (revoke to end them).
    token_lifetime: float = 3600.0
    latency: float = 0.0
    rate_limit: int | None = None
    rate_interval: float = 60.0
    # How the limit is counted: "fixed", "sliding" or "bucket" (worker.emulator.limits).
    rate_algorithm: Algorithm = "fixed"
    # Retry-After of rate-limit and outage answers; None: until the window ends / no header.
    retry_after: float | None = None
    # Random outages: this fraction of /v1/channel* calls (tickets, uploads, ...) is answered
    # with fail_status.
    fail_rate: float = 0.0
    fail_status: int = 503
    # The API is down: every call is answered with outage_status, or dropped ("drop").
    outage: bool = False
    outage_status: int = 503
    outage_mode: Literal["status", "drop"] = "status"
    # Seconds a polled, unacknowledged seller event stays hidden before it comes again.
    event_visibility: float = 300.0
    # What a second POST of a ticketId the seller already has gets: False, 201 again (and
    # counted as a duplicate); True, 409 Conflict. The real API's answer is unconfirmed.
    conflict_on_duplicate: bool = False
    # A post of the same message again (the same body) in a known conversation: False, 201
    # (a duplicate); True, 409. Follow-ups (another body) get 201 either way.
    conflict_on_repeated_message: bool = False
    # An upload of a (sellerId, ticketId, filename) stored before: False overwrites it;
    # True answers 409 and keeps the first.
    conflict_on_existing_file: bool = False
    # As SCX: an event handed out this many times and still not acknowledged is given up
    # (never served again; ``events.given_up``). None: served until acknowledged.
    event_max_deliveries: int | None = 10
    # The most events one GET serves, whatever its ``limit`` (JTL's schema: 100).
    event_page_cap: int = 100
    # One window per route category, as JTL counts (worker.emulator.limits): the channel
    # routes keep rate_limit (JTL's 60 when None), the others the limits below, all per
    # rate_interval and counted by rate_algorithm; /v1/auth is then limited too. False: one
    # window (rate_limit) for every /v1/channel* route, none for /v1/auth.
    category_limits: bool = False
    event_rate_limit: int = CATEGORY_LIMITS["event"]
    order_rate_limit: int = CATEGORY_LIMITS["order"]
    offer_rate_limit: int = CATEGORY_LIMITS["offer"]
    default_rate_limit: int = CATEGORY_LIMITS["default"]


_CATEGORY_FIELDS = (
    "category_limits",
    "event_rate_limit",
    "order_rate_limit",
    "offer_rate_limit",
    "default_rate_limit",
)


def _is_status(value: object) -> bool:
    return isinstance(value, int) and 400 <= value <= 599


# Per field: the JSON types it takes and the values it allows (the control route passes raw
# JSON, so neither is trusted to the annotations).
_NUMBER = (int, float)
_CONFIG_RULES: dict[str, tuple[tuple[type, ...], Callable[[Any], bool]]] = {
    "refresh_token": ((str, type(None)), lambda v: v is None or bool(v)),
    "token_lifetime": (_NUMBER, lambda v: v > 0),
    "latency": (_NUMBER, lambda v: v >= 0),
    "rate_limit": ((int, type(None)), lambda v: v is None or v >= 1),
    "rate_interval": (_NUMBER, lambda v: v > 0),
    "rate_algorithm": ((str,), lambda v: v in ALGORITHMS),
    "retry_after": ((*_NUMBER, type(None)), lambda v: v is None or v >= 0),
    "fail_rate": (_NUMBER, lambda v: 0 <= v <= 1),
    "fail_status": ((int,), _is_status),
    "outage": ((bool,), lambda v: True),
    "outage_status": ((int,), _is_status),
    "outage_mode": ((str,), lambda v: v in ("status", "drop")),
    "event_visibility": (_NUMBER, lambda v: v >= 0),
    "conflict_on_duplicate": ((bool,), lambda v: True),
    "conflict_on_repeated_message": ((bool,), lambda v: True),
    "conflict_on_existing_file": ((bool,), lambda v: True),
    "event_max_deliveries": ((int, type(None)), lambda v: v is None or v >= 1),
    "event_page_cap": ((int,), lambda v: 1 <= v <= 1000),
    "category_limits": ((bool,), lambda v: True),
    "event_rate_limit": ((int,), lambda v: v >= 1),
    "order_rate_limit": ((int,), lambda v: v >= 1),
    "offer_rate_limit": ((int,), lambda v: v >= 1),
    "default_rate_limit": ((int,), lambda v: v >= 1),
}
_RATE_FIELDS = {"rate_limit", "rate_interval", "rate_algorithm", *_CATEGORY_FIELDS}


@dataclass
class Outage:
    """One outage: when it began and ended (seconds since the emulator was created)."""

    started_at: float
    ended_at: float | None = None
    ticket_calls: int = 0
    auth_calls: int = 0
    other_calls: int = 0  # the other /v1/channel* routes (uploads, downloads, events)
    # Calls answered while it lasted, by status; DROPPED (0) for a dropped connection.
    statuses: Counter[int] = field(default_factory=Counter)
    # Seconds from its end to the next accepted ticket: how long the client took to recover.
    recovered_after: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"statuses": _by_status(self.statuses)}


@dataclass
class RateWindow:
    """One rate-limit interval (for ``fixed``: the window) and what happened in it."""

    started_at: float  # seconds since the emulator was created
    limit: int
    interval: float
    algorithm: Algorithm = "fixed"
    requests: int = 0
    accepted: int = 0
    limited: int = 0  # answered 429
    category: str = "channel"  # the route category whose window it is (category_limits)


@dataclass
class EmulatorState:
    auth_calls: int = 0
    auth_failures: int = 0
    ticket_calls: int = 0
    unauthorized: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # of ticket calls
    # Every /v1/channel* call by route, and its answers as "route status" (e.g. "upload 201").
    channel_calls: Counter[str] = field(default_factory=Counter)
    route_statuses: Counter[str] = field(default_factory=Counter)
    dropped: int = 0  # calls whose connection an outage closed without an answer
    # The ledger. Bodies in arrival order; counts per ticketId (a count above 1 is a ticket
    # the client sent again after it had been accepted).
    accepted: list[dict[str, Any]] = field(default_factory=list)
    accepted_counts: Counter[str] = field(default_factory=Counter)
    accepted_total: int = 0
    duplicates: int = 0
    conflicts: int = 0  # repeated tickets answered 409 (conflict_on_duplicate)
    first_accepted_at: float | None = None  # seconds since the emulator was created
    last_accepted_at: float | None = None
    max_concurrent_ticket_calls: int = 0
    outages: list[Outage] = field(default_factory=list)
    rate_windows: list[RateWindow] = field(default_factory=list)
    # Keys lower-cased, so lookups do not depend on how the client spelled them.
    request_headers: dict[str, str] = field(default_factory=dict)
    # The same for the last call of each route, "auth" included.
    headers_by_route: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_json(self, *, bodies: bool = True) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["statuses"] = _by_status(self.statuses)
        data["outages"] = [outage.to_json() for outage in self.outages]
        data["rate_windows"] = [asdict(window) for window in self.rate_windows]
        if not bodies:
            del data["accepted"]
        return data


def _seen_headers(request: web.Request) -> dict[str, str]:
    """A request's headers as the state records them: names lower-cased, no credentials."""
    return {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}


def _by_status(statuses: Counter[int]) -> dict[str, int]:
    return {str(status): n for status, n in statuses.items()}


@dataclass(frozen=True)
class _Fault:
    status: int
    retry_after: float | None


# A place in a fault queue for a request that passes as usual (``inject(..., after=n)``).
_PASS = _Fault(0, None)


class Emulator:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        self.state = EmulatorState()
        self._epoch = time.monotonic()
        self._faults: dict[Route, deque[_Fault]] = {route: deque() for route in ROUTES}
        self._random = random.Random()
        self._tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.issued_tokens: list[str] = []
        """Every token handed out, revoked or not: tests check that none reaches a log."""
        self._limiters: dict[Category, Limiter] = {}
        self._windows: dict[Category, RateWindow] = {}
        self._in_flight = 0
        self.files = FileStore()
        """Attachment files by (seller, ticket, filename): uploads land here, downloads read."""
        self.events = EventQueue(
            self.files,
            lambda: self.config.event_visibility,
            lambda: self.config.event_max_deliveries,
            lambda: self.config.event_page_cap,
        )
        """The channel's seller events (``GET``/``DELETE /v1/channel/event``) and their ledger."""
        self.tickets = Conversations()
        """Accepted tickets by (seller, ticket id): each a conversation of messages."""
        self._uploads = UploadRoute(
            self.files, self.tickets.names_of, lambda: self.config.conflict_on_existing_file
        )
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None
        if self.config.outage:
            self._begin_outage()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the emulator is not running")
        return self._base_url

    def clock(self) -> float:
        """Seconds since the emulator was created: the time base of the recorded state."""
        return time.monotonic() - self._epoch

    @property
    def outage(self) -> Outage | None:
        """The latest outage (running or over), None if there was none."""
        return self.state.outages[-1] if self.state.outages else None

    def inject(
        self,
        route: Route,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        after: int = 0,
    ) -> None:
        """Answer the next ``count`` requests on ``route`` with ``status``, unvalidated.

        With ``after``, that many requests pass as usual first (e.g. the second upload fails).
        """
        # Checked here rather than trusted to the types: the control route passes raw JSON.
        if route not in self._faults:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, not {route!r}")
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError(f"status must be an integer from 400 to 599, not {status!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, not {count!r}")
        if retry_after is not None and (not isinstance(retry_after, _NUMBER) or retry_after < 0):
            raise ValueError(f"retry_after must be a non-negative number, not {retry_after!r}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a non-negative integer, not {after!r}")
        self._faults[route].extend([_PASS] * after + [_Fault(status, retry_after)] * count)

    def add_events(self, events: list[Any], files: list[dict[str, Any]] | None = None) -> list[str]:
        """Inject seller events (kept as given) and the files their replies name.

        A ``Seller:Ticket.Reply`` also joins its conversation (``GET /_emulator/tickets``)."""
        ids = self.events.add(events, files)
        for event in events:
            self.tickets.add_reply(event)
        return ids

    def revoke_tokens(self) -> None:
        self._tokens.clear()

    def reset(self) -> None:
        """Clear counters, recorded tickets, faults and the rate window; keep config, tokens.

        An outage that is on stays on and is recorded afresh.
        """
        self.state = EmulatorState()
        self.files.clear()
        self.events.clear()
        self.tickets.clear()
        for queue in self._faults.values():
            queue.clear()
        self._limiters.clear()
        self._windows.clear()
        if self.config.outage:
            self._begin_outage()

    def configure(self, **changes: Any) -> None:
        """Change config fields in place, checked (the control route passes raw JSON).

        Every change applies from the next request on; ``outage`` switches record an outage,
        a new ``rate_limit``, ``rate_interval`` or ``rate_algorithm`` starts the count afresh.
        """
        for name, value in changes.items():
            rule = _CONFIG_RULES.get(name)
            if rule is None:
                raise ValueError(f"unknown config field {name!r}")
            types, allowed = rule
            wrong_bool = isinstance(value, bool) and bool not in types
            if wrong_bool or not isinstance(value, types) or not allowed(value):
                raise ValueError(f"invalid value for {name}: {value!r}")
        was_down = self.config.outage
        for name, value in changes.items():
            setattr(self.config, name, value)
        if self.config.outage and not was_down:
            self._begin_outage()
        elif was_down and not self.config.outage:
            outage = self.outage
            if outage is not None:
                outage.ended_at = self.clock()
        if _RATE_FIELDS & changes.keys():
            self._limiters.clear()
            self._windows.clear()

    def _begin_outage(self) -> None:
        self.state.outages.append(Outage(started_at=self.clock()))

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        # A short shutdown_timeout so that requests sleeping in `latency` cannot hold up stop().
        runner = web.AppRunner(self._make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._base_url = _base_url(runner.addresses[0])
        log.info("scx_emulator_started", url=self._base_url)
        return self._base_url

    async def stop(self) -> None:
        runner, self._runner, self._base_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Emulator:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[_error_list_middleware])
        app.router.add_post("/v1/auth", self._auth)
        app.router.add_post("/v1/channel/ticket", self._channel("ticket", self._answer_ticket))
        app.router.add_post(
            "/v1/channel/ticket/attachment", self._channel("upload", self._uploads.answer)
        )
        app.router.add_get(
            "/v1/channel/ticket/attachment", self._channel("download", self._answer_download)
        )
        app.router.add_get("/v1/channel/event", self._channel("events", self.events.answer_get))
        app.router.add_delete(
            "/v1/channel/event", self._channel("events", self.events.answer_delete)
        )
        app.router.add_get("/_emulator/state", self._snapshot)
        app.router.add_get("/_emulator/tickets", self._conversations)
        app.router.add_get("/_tickets", self._conversations)
        app.router.add_post("/_emulator/{action}", self._control)
        return app

    async def _auth(self, request: web.Request) -> web.Response:
        self.state.auth_calls += 1
        self.state.headers_by_route["auth"] = _seen_headers(request)
        if self.config.outage:
            return self._outage_response(request, "auth")
        response = await self._answer_auth(request)
        if response.status >= 400:
            self.state.auth_failures += 1
        return response

    async def _answer_auth(self, request: web.Request) -> web.Response:
        if fault := self._pop_fault("auth"):
            return self._fault_response(request, "auth", fault, {})
        limited = self._current_limiter("auth") if self.config.category_limits else None
        if limited is not None:
            category, limiter = limited
            decision = limiter.take(time.monotonic())
            window = self._record(category, limiter, decision)
            if not decision.admitted:
                window.limited += 1
                headers = self._headers(limiter, decision.remaining)
                headers["Retry-After"] = str(math.ceil(decision.retry_after or 0.0))
                return _fail(
                    request, 429, "RATE429", ("Zu viele Anfragen", "too many requests"), headers
                )
        if request.content_type != "application/x-www-form-urlencoded":
            text = "Der Body muss formularkodiert sein", "body must be form-urlencoded"
            return _fail(request, 400, "VAL100", text)
        refresh_token = (await request.post()).get("refreshToken")
        if not refresh_token or not isinstance(refresh_token, str):
            text = "Pflichtfeld refreshToken fehlt", "required field refreshToken not found"
            return _fail(request, 400, "VAL100", text)
        expected = self.config.refresh_token
        if expected is not None and refresh_token != expected:
            text = "Ungültiges Refresh-Token", "invalid refresh token"
            return _fail(request, 401, "AUTH401", text)
        lifetime = self.config.token_lifetime
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + lifetime
        self.issued_tokens.append(token)
        expire_at = datetime.now(UTC) + timedelta(seconds=lifetime)
        body = {
            "scope": "CHANNEL",
            "authToken": token,
            "tokenExpireAt": expire_at.isoformat(timespec="milliseconds"),
            "expiresIn": math.ceil(lifetime),
        }
        return _json(body)

    def _channel(self, route: Route, answer: Answer) -> Handler:
        """The handler of a /v1/channel* route: the shared gate, then the route's answer."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._through_gate(request, route, answer)

        return handle

    async def _through_gate(
        self, request: web.Request, route: Route, answer: Answer
    ) -> web.StreamResponse:
        state = self.state
        state.channel_calls[route] += 1
        if route == "ticket":
            state.ticket_calls += 1
        state.request_headers = state.headers_by_route[route] = _seen_headers(request)
        self._in_flight += 1
        state.max_concurrent_ticket_calls = max(state.max_concurrent_ticket_calls, self._in_flight)
        try:
            if self.config.latency > 0:
                await asyncio.sleep(self.config.latency)
            if self.config.outage:
                return self._outage_response(request, route)
            response = await self._gate(request, route, answer)
        finally:
            self._in_flight -= 1
        state.route_statuses[f"{route} {response.status}"] += 1
        if route == "ticket":
            state.statuses[response.status] += 1
        if response.status == 401:
            state.unauthorized += 1
        return response

    async def _gate(self, request: web.Request, route: Route, answer: Answer) -> web.StreamResponse:
        """Faults, the shared rate limit and the bearer token, in the API's order."""
        now = time.monotonic()
        limited = self._current_limiter(route)
        limiter = None if limited is None else limited[1]
        if fault := self._pop_fault(route):
            headers = {} if limiter is None else self._headers(limiter, limiter.peek(now))
            return self._fault_response(request, route, fault, headers)
        decision = window = None
        headers = {}
        if limited is not None:
            category, limiter = limited
            decision = limiter.take(now)
            window = self._record(category, limiter, decision)
            headers = self._headers(limiter, decision.remaining)
        if window is not None and decision is not None and not decision.admitted:
            window.limited += 1
            wait = self.config.retry_after
            if wait is None:
                wait = decision.retry_after or 0.0
            headers["Retry-After"] = str(math.ceil(wait))
            text = "Zu viele Anfragen", "too many requests"
            return _fail(request, 429, "RATE429", text, headers)
        if not self._authorized(request, now):
            text = "Zugriffstoken fehlt, ist ungültig oder abgelaufen", "invalid or expired token"
            return _fail(request, 401, "AUTH401", text, headers)
        response = await answer(request, headers)
        if window is not None and response.status < 300:
            window.accepted += 1
        return response

    def _outage_response(self, request: web.Request, route: Route) -> web.Response:
        outage = self.outage
        assert outage is not None  # configure() opens one whenever `outage` is switched on
        if route == "ticket":
            outage.ticket_calls += 1
        elif route == "auth":
            outage.auth_calls += 1
        else:
            outage.other_calls += 1
        if self.config.outage_mode == "drop" and request.transport is not None:
            # Closed without a byte of answer; aiohttp then skips writing the response below.
            request.transport.abort()
            outage.statuses[DROPPED] += 1
            self.state.dropped += 1
            return web.Response(status=503)
        status = self.config.outage_status
        outage.statuses[status] += 1
        if route == "auth":
            self.state.auth_failures += 1
        else:
            self.state.route_statuses[f"{route} {status}"] += 1
            if route == "ticket":
                self.state.statuses[status] += 1
        headers: dict[str, str] = {}
        if status == 429:
            headers = _rate_headers(self._reported_limit(route), 0, self.config.rate_interval)
        if self.config.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(self.config.retry_after))
        text = "Dienst vorübergehend nicht verfügbar", "service temporarily unavailable"
        return _fail(request, status, f"EMU{status}", text, headers)

    async def _answer_ticket(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        if request.content_type != "application/json":
            text = "Der Body muss JSON sein", "body must be application/json"
            return _fail(request, 400, "VAL100", text, headers)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            text = "Der Body ist kein gültiges JSON", "body is not valid JSON"
            return _fail(request, 400, "VAL100", text, headers)
        if violations := _schema_violations(body, english=_english(request)):
            return _json({"errorList": violations}, 400, headers)
        key = (body["sellerId"], body["ticketId"])
        repeat = self.tickets.repeat_of(body)
        config = self.config
        if key in self.tickets and (
            config.conflict_on_duplicate
            or (repeat is not None and config.conflict_on_repeated_message)
        ):
            self.state.conflicts += 1
            self.tickets.refused(body)
            text = "Ticket existiert bereits", "ticket already exists"
            return _fail(request, 409, "CONFLICT409", text, headers)
        self.tickets.post(body, self.clock())
        self._record_accepted(body, repeat=repeat is not None)
        return web.Response(status=201, headers=headers)

    async def _answer_download(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        """``GET /v1/channel/ticket/attachment?sellerId=&ticketId=&filename=``: the bytes."""
        query = request.query
        key = (query.get("sellerId", ""), query.get("ticketId", ""), query.get("filename", ""))
        if not all(key):
            text = (
                "sellerId, ticketId und filename sind Pflichtparameter",
                "sellerId, ticketId and filename are required",
            )
            return _fail(request, 400, "VAL100", text, headers)
        stored = self.files.get(*key)
        if stored is None:
            text = "Anhang nicht gefunden", "attachment not found"
            return _fail(request, 404, "NOTFOUND404", text, headers)
        return web.Response(body=stored.data, content_type=stored.content_type, headers=headers)

    def _record_accepted(self, body: dict[str, Any], *, repeat: bool) -> None:
        state, at = self.state, self.clock()
        state.accepted.append(body)
        state.accepted_counts[body["ticketId"]] += 1  # posts per conversation
        state.accepted_total += 1
        if repeat:  # the same message again; a follow-up is no duplicate
            state.duplicates += 1
        if state.first_accepted_at is None:
            state.first_accepted_at = at
        state.last_accepted_at = at
        outage = self.outage
        if outage and outage.ended_at is not None and outage.recovered_after is None:
            outage.recovered_after = at - outage.ended_at

    def _authorized(self, request: web.Request, now: float) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        expiry = self._tokens.get(token.strip())
        return scheme.lower() == "bearer" and expiry is not None and now < expiry

    def _category_limit(self, route: Route) -> tuple[Category, int] | None:
        """The category of ``route`` and its limit per ``rate_interval`` (None: unlimited)."""
        config = self.config
        if not config.category_limits:
            if route == "auth" or config.rate_limit is None:
                return None
            return "channel", config.rate_limit
        category = ROUTE_CATEGORY[route]
        limits: dict[Category, int] = {
            "channel": config.rate_limit or CATEGORY_LIMITS["channel"],
            "event": config.event_rate_limit,
            "order": config.order_rate_limit,
            "offer": config.offer_rate_limit,
            "default": config.default_rate_limit,
        }
        return category, limits[category]

    def _current_limiter(self, route: Route) -> tuple[Category, Limiter] | None:
        """The category and limiter that count ``route`` (None: no limit); a changed config,
        also one assigned to ``config`` directly, starts a fresh one."""
        found = self._category_limit(route)
        if found is None:
            return None
        category, limit = found
        wanted = (self.config.rate_algorithm, limit, self.config.rate_interval)
        limiter = self._limiters.get(category)
        if limiter is None or (limiter.algorithm, limiter.limit, limiter.interval) != wanted:
            limiter = self._limiters[category] = Limiter(*wanted)
            self._windows.pop(category, None)
        return category, limiter

    def _record(self, category: Category, limiter: Limiter, decision: Decision) -> RateWindow:
        """Count the call in the record of its period, opening one when a period begins."""
        started_at = decision.period_start - self._epoch
        window = self._windows.get(category)
        if window is None or window.started_at != started_at:
            window = RateWindow(
                started_at,
                limiter.limit,
                limiter.interval,
                algorithm=limiter.algorithm,
                category=category,
            )
            self._windows[category] = window
            self.state.rate_windows.append(window)
        window.requests += 1
        return window

    def _headers(self, limiter: Limiter, remaining: int) -> dict[str, str]:
        return _rate_headers(limiter.limit, remaining, limiter.interval)

    def _pop_fault(self, route: Route) -> _Fault | None:
        queue = self._faults[route]
        if queue:
            fault = queue.popleft()
            return None if fault is _PASS else fault
        if route != "auth" and self._random.random() < self.config.fail_rate:
            return _Fault(self.config.fail_status, None)
        return None

    def _fault_response(
        self, request: web.Request, route: Route, fault: _Fault, headers: dict[str, str]
    ) -> web.Response:
        if fault.status == 429:
            headers = _rate_headers(self._reported_limit(route), 0, self.config.rate_interval)
        if fault.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(fault.retry_after))
        text = "Vom Emulator eingespeister Fehler", "fault injected by the emulator"
        return _fail(request, fault.status, f"EMU{fault.status}", text, headers)

    def _reported_limit(self, route: Route) -> int:
        """``X-RateLimit-Limit`` of a 429 the emulator makes up (a fault, an outage)."""
        if self.config.category_limits:
            found = self._category_limit(route)
            assert found is not None  # every route has a category then
            return found[1]
        if route == "auth":
            return _AUTH_LIMIT
        return self.config.rate_limit or _CHANNEL_LIMIT

    async def _control(self, request: web.Request) -> web.Response:
        actions: dict[str, Callable[..., object]] = {
            "config": self.configure,
            "inject": self.inject,
            "revoke": self.revoke_tokens,
            "reset": self.reset,
            "events": self.add_events,
        }
        name = request.match_info["action"]
        if name not in actions:
            raise web.HTTPNotFound()
        try:
            actions[name](**await _json_object(request))
        except (TypeError, ValueError) as exc:  # TypeError: an unknown or missing argument
            return _fail(request, 400, "VAL100", (str(exc), str(exc)))
        return _json(asdict(self.config)) if name == "config" else await self._snapshot(request)

    async def _conversations(self, request: web.Request) -> web.Response:
        """Each conversation: its messages, the seller's replies, its files."""
        return _json({"conversations": self.tickets.to_json(self.files)})

    async def _snapshot(self, request: web.Request) -> web.Response:
        """The state; ``?bodies=0`` leaves out the accepted bodies (the counts stay)."""
        bodies = request.query.get("bodies", "1").lower() not in ("0", "false", "no")
        pending = {route: [f.status for f in queue] for route, queue in self._faults.items()}
        state = self.state.to_json(bodies=bodies)
        extra = {
            "pending_faults": pending,
            "files": self.files.to_json(),
            "events": self.events.ledger.to_json(ids=bodies) | {"pending": self.events.pending},
        }
        return _json(state | extra | {"clock": round(self.clock(), 3)})


async def serve(
    config: EmulatorConfig, host: str, port: int, *, ready: Callable[[str], None] | None = None
) -> None:
    """Run an emulator until cancelled; ``ready`` gets the base URL once it listens."""
    emulator = Emulator(config)
    url = await emulator.start(host, port)
    try:
        if ready is not None:
            ready(url)
        await asyncio.Event().wait()
    finally:
        await emulator.stop()


@cache
def _validator() -> Draft202012Validator:
    schema = orjson.loads(
        resources.files("worker.emulator").joinpath("ticket.schema.json").read_bytes()
    )
    Draft202012Validator.check_schema(schema)
    checker = Draft202012Validator.FORMAT_CHECKER
    # jsonschema silently skips formats whose checker library is missing.
    if "date-time" not in checker.checkers:
        raise RuntimeError("rfc3339-validator is not installed; createdAt would go unchecked")
    return Draft202012Validator(schema, format_checker=checker)


def _schema_violations(body: Any, *, english: bool) -> list[dict[str, Any]]:
    errors = sorted(_validator().iter_errors(body), key=lambda e: e.json_path)
    entries = []
    for error in errors:
        for path, german, message in _describe(error):
            hint = f"Check the field `{path}`." if english else f"Prüfen Sie das Feld `{path}`."
            entries.append(_entry("VAL100", message if english else german, hint))
    return entries


def _describe(error: ValidationError) -> Iterator[tuple[str, str, str]]:
    """(field path, German message, English message) for each field an error is about."""
    if error.validator == "required":
        # jsonschema raises one error per missing field but names it only in the message.
        names: Any = error.validator_value
        missing = [n for n in names if error.message == f"{n!r} is a required property"]
        path = _path(error, missing[0] if missing else None)
        yield path, f"Pflichtfeld {path} fehlt", f"{path}: {error.message}"
    elif error.validator == "additionalProperties":
        instance: Any = error.instance
        schema: Any = error.schema
        for name in sorted(set(instance) - set(schema.get("properties", {}))):
            path = _path(error, name)
            yield path, f"Feld {path} ist nicht erlaubt", f"{path}: field is not allowed"
    else:
        path = _path(error)
        yield path, f"Ungültiges Feld {path}", f"{path}: {error.message}"


def _path(error: ValidationError, child: str | None = None) -> str:
    """``from.role``, ``attachment[0].filename``: the error's JSON path without ``$.``."""
    path = error.json_path.removeprefix("$").removeprefix(".")
    if child is not None:
        path = f"{path}.{child}" if path else child
    return path or "(body)"


def _rate_headers(limit: int, remaining: int, interval: float) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Interval-Length-Seconds": f"{interval:g}",
    }


def _base_url(address: Any) -> str:
    host, port = address[0], address[1]
    # A wildcard bind is reachable on loopback; a URL naming 0.0.0.0 is not portable.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ValueError("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    return data


@web.middleware
async def _error_list_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer aiohttp's own errors (404, 405, 413, ...) in the API's errorList format too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = f"Anfrage abgelehnt: {exc.reason}", exc.reason
        return _fail(request, exc.status, f"HTTP{exc.status}", text)
