"""Reading SCX API answers: the server's wait hints, its rate-limit headers, errorList.

These rules are shared by the token flow (``worker.scx.auth``) and the ticket client
(``worker.scx``), so both read an answer the same way. Which statuses are transient is
HTTP's rule, not the API's: ``worker.core.retry.is_transient_status``, shared with the
attachment downloads.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import httpx
import orjson

from worker.core.retry import retry_after_header


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` or the rate-limit headers.

    ``Retry-After`` may be delta-seconds or an HTTP date. Without it, a 429 that reports
    ``X-RateLimit-Remaining: 0`` is read as "wait for the next interval".
    """
    if (hinted := retry_after_header(response)) is not None:
        return hinted
    headers = response.headers
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
