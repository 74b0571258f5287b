"""Reading SCX API answers: which statuses are transient, the server's wait hints, errorList.

These rules are shared by the token flow (``worker.scx.auth``) and the ticket client
(``worker.scx``), so both classify a status the same way.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, NamedTuple

import httpx
import orjson

# 408 Request Timeout, 425 Too Early, 429 Too Many Requests: the request itself was fine.
_TRANSIENT_4XX = frozenset({408, 425, 429})


def is_transient_status(status: int) -> bool:
    """A status another attempt may cure: 408, 425, 429 and every 5xx."""
    return status >= 500 or status in _TRANSIENT_4XX


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` or the rate-limit headers.

    ``Retry-After`` may be delta-seconds or an HTTP date. Without it, a 429 that reports
    ``X-RateLimit-Remaining: 0`` is read as "wait for the next interval".
    """
    headers = response.headers
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - time.time())
    if response.status_code == httpx.codes.TOO_MANY_REQUESTS:
        remaining = _number(headers.get("x-ratelimit-remaining"))
        interval = _number(headers.get("x-ratelimit-interval-length-seconds"))
        if remaining == 0 and interval is not None:
            return interval
    return None


class RateLimit(NamedTuple):
    """What one answer's ``X-RateLimit-*`` headers say about the shared budget."""

    limit: int
    remaining: int
    interval: float


def rate_limit(response: httpx.Response) -> RateLimit | None:
    """The ``X-RateLimit-*`` headers, or ``None`` when any of the three is missing or bad."""
    headers = response.headers
    limit = _number(headers.get("x-ratelimit-limit"))
    remaining = _number(headers.get("x-ratelimit-remaining"))
    interval = _number(headers.get("x-ratelimit-interval-length-seconds"))
    if limit is None or remaining is None or interval is None or limit < 1 or interval <= 0:
        return None
    return RateLimit(int(limit), max(0, int(remaining)), interval)


def error_list(response: httpx.Response) -> list[Any]:
    """The API's ``errorList``, or a one-item stand-in when the body has none."""
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("errorList"), list):
        return list(payload["errorList"])
    text = response.content[:200].decode("utf-8", "replace")
    return [{"code": None, "message": text or response.reason_phrase, "severity": "error"}]


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
