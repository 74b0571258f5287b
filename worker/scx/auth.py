"""Access-token management for the SCX API as an ``httpx.Auth``.

The channel holds a long-lived refresh token; ``POST /v1/auth`` (form-encoded) trades it
for a short-lived bearer token. This auth flow

- reuses the token until ``margin`` seconds before it expires, then refreshes before the
  next request (a request never leaves with a token about to lapse);
- lets concurrent requests share one refresh (single-flight behind an ``asyncio.Lock``:
  whoever waited re-checks and finds the fresh token, or the failure of the refresh it
  waited for: an auth outage costs one call to the rate-limited ``/v1/auth`` per wave of
  waiting requests, not one per request);
- answers a 401 with one refresh and one resend of the request; a second 401 is handed
  back to the caller, which treats it as transient;
- turns a refused refresh token into ``CredentialsRejected`` and remembers it, so no
  later request calls ``/v1/auth`` again (no hot loop against a rate-limited route).

Lifetimes come from ``expiresIn`` on the monotonic clock, so the wall clock's skew
against the API does not matter. The refresh token lives in a ``SecretStr`` and the
tokens in private attributes; neither is logged nor put into an exception.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import structlog
from pydantic import SecretStr

from worker import USER_AGENT
from worker.core.errors import CredentialsRejected, TransientError
from worker.core.retry import is_transient_status
from worker.scx.responses import error_list, retry_after

log = structlog.get_logger(__name__)


class TokenAuth(httpx.Auth):
    def __init__(
        self,
        refresh_token: SecretStr,
        *,
        auth_url: str,
        timeout: httpx.Timeout,
        margin: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._refresh_token = refresh_token
        self._auth_url = auth_url
        self._timeout = timeout
        self._margin = margin
        self._clock = clock
        self._lock = asyncio.Lock()
        self._bearer: str | None = None
        self._refresh_at = 0.0
        self._rejected: CredentialsRejected | None = None
        self._refresh_attempts = 0
        self._last_failure: TransientError | None = None
        self.refreshes = 0
        """Successful token refreshes so far."""
        self.on_refreshed: Callable[[float], None] | None = None
        """Told the lifetime of every token stored (the client's ``Instrumentation``)."""

    def sync_auth_flow(self, request: httpx.Request) -> Any:
        raise RuntimeError("TokenAuth works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if self._stale(None):
            seen = self._refresh_attempts
            async with self._lock:
                self._share_failure_since(seen)
                if self._stale(None):
                    asked_at = self._clock()
                    await self._store((yield self._auth_request()), asked_at)
        sent_with = self._bearer
        request.headers["Authorization"] = f"Bearer {sent_with}"
        response = yield request
        if response.status_code != httpx.codes.UNAUTHORIZED:
            return
        # Read the 401 to the end first: that puts its connection back in the pool.
        await response.aread()
        seen = self._refresh_attempts
        async with self._lock:
            self._share_failure_since(seen)
            if self._stale(sent_with):
                asked_at = self._clock()
                await self._store((yield self._auth_request()), asked_at)
        request.headers["Authorization"] = f"Bearer {self._bearer}"
        yield request

    def _stale(self, sent_with: str | None) -> bool:
        """Whether a refresh is due: no token, one about to lapse, or the one a 401 refused."""
        if self._rejected is not None:
            raise self._rejected
        if self._bearer is None or self._clock() >= self._refresh_at:
            return True
        return sent_with is not None and sent_with == self._bearer

    def _share_failure_since(self, seen: int) -> None:
        """Fail like the refresh that ran while we waited for the lock, if it failed."""
        failure = self._last_failure
        if self._refresh_attempts != seen and failure is not None:
            raise TransientError(
                failure.reason,
                status=failure.status,
                retry_after=failure.retry_after,
                error_list=failure.error_list,
            )

    def _auth_request(self) -> httpx.Request:
        return auth_request(self._auth_url, self._refresh_token, self._timeout)

    async def _store(self, response: httpx.Response, asked_at: float) -> None:
        self._refresh_attempts += 1
        try:
            await self._read_token(response, asked_at)
        except TransientError as exc:
            self._last_failure = exc
            raise
        self._last_failure = None

    async def _read_token(self, response: httpx.Response, asked_at: float) -> None:
        # An overridden async_auth_flow gets responses unread (requires_response_body only
        # applies to the default flow).
        await response.aread()
        status = response.status_code
        if is_transient_status(status):
            raise TransientError(
                f"POST /v1/auth answered HTTP {status}",
                status=status,
                retry_after=retry_after(response),
                error_list=error_list(response),
            )
        if status >= 400:
            self._rejected = CredentialsRejected(status, error_list(response))
            raise self._rejected
        try:
            payload = orjson.loads(response.content)
            bearer = str(payload["authToken"])
            lifetime = _lifetime(payload)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TransientError(
                f"POST /v1/auth answered HTTP {status} without a usable token "
                f"({type(exc).__name__})",
                status=status,
            ) from None
        # The lifetime runs from when the API issued the token, somewhere during the round
        # trip: counting from the request keeps the whole round trip on the safe side.
        # A short-lived token (tests, or a sandbox handing out 360 s tokens) must not be
        # refreshed on every request, so the margin never exceeds a fifth of the lifetime.
        self._bearer = bearer
        self._refresh_at = asked_at + lifetime - min(self._margin, lifetime / 5)
        self.refreshes += 1
        if self.on_refreshed is not None:
            self.on_refreshed(lifetime)
        log.info("scx.token_refreshed", expires_in=lifetime, refreshes=self.refreshes)


def auth_request(url: str, refresh_token: SecretStr, timeout: httpx.Timeout) -> httpx.Request:
    """``POST /v1/auth``, built here only: the worker's auth flow and ``check`` send this one.

    It carries its own headers because an auth flow's extra request does not inherit the
    client's (``User-Agent`` included).
    """
    return httpx.Request(
        "POST",
        url,
        data={"refreshToken": refresh_token.get_secret_value()},
        headers={"Accept": "application/json", "Accept-Language": "en", "User-Agent": USER_AGENT},
        extensions={"timeout": timeout.as_dict()},
    )


def _lifetime(payload: dict[str, Any]) -> float:
    """Seconds the token lives: ``expiresIn``, else what is left until ``tokenExpireAt``.

    ``expiresIn`` is preferred because it does not depend on our clock agreeing with the
    API's; ``tokenExpireAt`` is the documented fallback (an ISO 8601 time with an offset).
    """
    if payload.get("expiresIn") is not None:
        lifetime = float(payload["expiresIn"])
    else:
        expires = datetime.fromisoformat(str(payload["tokenExpireAt"]))
        if expires.tzinfo is None:
            raise ValueError("tokenExpireAt has no UTC offset")
        lifetime = (expires - datetime.now(UTC)).total_seconds()
    if not lifetime > 0:
        raise ValueError("the token is already expired")
    return lifetime
