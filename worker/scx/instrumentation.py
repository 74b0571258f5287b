"""How the SCX client reports what it sees: requests, routes, and the token's state.

``worker.obs`` declares the metrics and never imports the client; the client reports here,
and this module turns what httpx and the token flow saw into the one-line calls of
``worker.obs.metrics`` and into the token check of ``/readyz``:

=====================  ====================================================================
what                   where it goes
=====================  ====================================================================
every answer           ``api_requests_total``, ``api_request_duration_seconds``,
                       ``api_rate_limited_total``, by ``route`` (``route_of``): the httpx
                       event hooks (``hooks``) see the ticket calls and the auth flow's
                       token refreshes alike
a token stored         ``token_expires_in_seconds``, and ``token_status`` (``/readyz``)
a refresh's answer     ``token_status``: why no token is held
=====================  ====================================================================

One ``Instrumentation`` per ``ScxClient``; the token gauge reads the newest client's (one
client per process is the deployment unit).
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any

import httpx

from worker.core.retry import is_transient_status
from worker.obs import metrics


def route_of(request: httpx.Request) -> str:
    """The ``route`` label of a request: ticket, upload, auth, events, other."""
    path = request.url.path
    if path.endswith("/v1/auth"):
        return "auth"
    if path.endswith("/v1/channel/ticket/attachment") and request.method == "POST":
        return "upload"
    if path.startswith("/v1/channel/ticket"):
        return "ticket"
    if path.startswith("/v1/channel/event"):
        return "events"
    return "other"


class Instrumentation:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._token_deadline: float | None = None
        self._last_auth_status: int | None = None
        self._sent_at: weakref.WeakKeyDictionary[httpx.Request, float] = weakref.WeakKeyDictionary()
        metrics.watch_token(self.token_expires_in)

    def hooks(self) -> dict[str, list[Callable[..., Any]]]:
        """httpx ``event_hooks`` that count and time every API request."""
        return {"request": [self._on_request], "response": [self._on_response]}

    def token_refreshed(self, lifetime: float) -> None:
        """A new access token was stored; it lives ``lifetime`` seconds from now."""
        self._token_deadline = self._clock() + lifetime

    def token_expires_in(self) -> float:
        """Seconds until the token held expires; 0 when none is."""
        deadline = self._token_deadline
        return max(0.0, deadline - self._clock()) if deadline is not None else 0.0

    def token_status(self) -> tuple[bool, str]:
        """Whether a token is held or obtainable, and why; never calls the API itself.

        Probing ``/v1/auth`` would spend the rate-limited route's budget every few seconds,
        so this judges by what the client saw: a token held now, or the last refresh's
        answer. The worker fetches its first token just before its first send, so "none
        yet" is fine.
        """
        deadline = self._token_deadline
        now = self._clock()
        if deadline is not None and deadline > now:
            return True, f"held, expires in {deadline - now:.0f} s"
        status = self._last_auth_status
        if status is None:
            return True, "none yet; fetched before the first send"
        if status < 300:
            return True, "expired while idle; refreshed before the next send"
        if is_transient_status(status):
            return False, f"the last refresh failed with HTTP {status}"
        return False, f"the API refused the refresh token (HTTP {status})"

    async def _on_request(self, request: httpx.Request) -> None:
        self._sent_at[request] = time.perf_counter()

    async def _on_response(self, response: httpx.Response) -> None:
        request = response.request
        route = route_of(request)
        sent = self._sent_at.pop(request, None)
        took = time.perf_counter() - sent if sent is not None else None
        metrics.api_answered(route, response.status_code, took)
        if route == "auth":
            self._last_auth_status = response.status_code
