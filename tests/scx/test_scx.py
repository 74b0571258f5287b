"""ScxClient: classification, retry budget and wait hints, over httpx.MockTransport."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.support.scx import ERRORS, client, scripted
from worker.core.errors import CredentialsRejected, RetryLater, TicketRejected
from worker.scx import ScxClient
from worker.scx.breaker import State
from worker.scx.responses import retry_after


async def test_2xx_is_forwarded_with_json_body_and_english_errors() -> None:
    handler, seen = scripted(httpx.Response(201))
    async with client(handler) as scx:
        result = await scx.send_ticket(b'{"sellerId":"s"}')
    assert (result.status, result.attempts) == (201, 1)
    request = seen[0]
    assert request.url.path == "/v1/channel/ticket"
    assert request.content == b'{"sellerId":"s"}'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept-language"] == "en"
    assert request.headers["authorization"] == "Bearer t"


@pytest.mark.parametrize("status", [400, 403, 404, 413, 422])
async def test_non_retryable_4xx_is_rejected_with_error_list(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json=ERRORS))
    async with client(handler) as scx:
        with pytest.raises(TicketRejected) as raised:
            await scx.send_ticket(b"{}")
    assert len(seen) == 1
    assert raised.value.kind == "rejected"
    assert raised.value.detail == {"status": status, "errorList": ERRORS["errorList"]}
    assert raised.value.attempts == 1


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried_to_success(status: int) -> None:
    handler, seen = scripted(httpx.Response(status), httpx.Response(status), httpx.Response(201))
    async with client(handler) as scx:
        result = await scx.send_ticket(b"{}")
    assert (result.status, result.attempts, len(seen)) == (201, 3, 3)


async def test_rejection_after_transient_failures_counts_attempts() -> None:
    handler, _ = scripted(httpx.Response(503), httpx.Response(422, json=ERRORS))
    async with client(handler) as scx:
        with pytest.raises(TicketRejected) as raised:
            await scx.send_ticket(b"{}")
    assert raised.value.attempts == 2


async def test_attempt_budget_ends_in_retry_later() -> None:
    handler, seen = scripted(httpx.Response(503, json=ERRORS))
    async with client(handler, scx_retry_attempts=3) as scx:
        with pytest.raises(RetryLater) as raised:
            await scx.send_ticket(b"{}")
    assert len(seen) == 3
    assert raised.value.reason == "HTTP 503"
    assert raised.value.detail["status"] == 503
    assert raised.value.detail["errorList"] == ERRORS["errorList"]
    assert raised.value.attempts == 3


async def test_time_budget_stops_before_a_wait_that_would_overrun_it() -> None:
    # Retry-After 5 s against a 1 s budget: give up at once instead of sleeping past it.
    handler, seen = scripted(httpx.Response(429, headers={"Retry-After": "5"}))
    async with client(handler, scx_retry_attempts=50, scx_retry_budget=1.0) as scx:
        started = time.monotonic()
        with pytest.raises(RetryLater):
            await scx.send_ticket(b"{}")
    assert len(seen) == 1
    assert time.monotonic() - started < 1.0


def state_of(scx: ScxClient) -> State:
    return scx.breaker.state  # a call, so that mypy does not keep an earlier narrowing


async def test_an_outage_opens_the_breaker_so_senders_stop_calling() -> None:
    handler, seen = scripted(httpx.Response(503))
    async with client(
        handler,
        scx_retry_attempts=100,
        scx_retry_budget=1.0,
        scx_breaker_failures=3,
        scx_breaker_cooldown=0.3,
    ) as scx:
        results = await asyncio.gather(
            *(scx.send_ticket(b"{}") for _ in range(10)), return_exceptions=True
        )
        assert scx.breaker.state is State.OPEN
    assert all(isinstance(r, RetryLater) for r in results)
    # Without the breaker: 10 senders retrying every few ms for 1 s, hundreds of calls.
    # With it: the first round (all ten were already on their way) and a probe or two.
    assert len(seen) <= 14, len(seen)


async def test_a_successful_probe_closes_the_breaker_and_releases_every_waiter() -> None:
    handler, seen = scripted(*[httpx.Response(503)] * 3, httpx.Response(201))
    async with client(
        handler,
        scx_retry_attempts=1,  # waiting for the breaker is not an attempt
        scx_breaker_failures=3,
        scx_breaker_cooldown=0.2,
    ) as scx:
        await asyncio.gather(*(scx.send_ticket(b"{}") for _ in range(3)), return_exceptions=True)
        assert scx.breaker.state is State.OPEN
        started = time.monotonic()
        results = await asyncio.gather(*(scx.send_ticket(b"{}") for _ in range(5)))
        assert state_of(scx) is State.CLOSED
    assert [r.status for r in results] == [201] * 5
    assert time.monotonic() - started >= 0.15  # nobody called before the cooldown ended
    assert len(seen) == 3 + 5  # one probe, then the other four: no call was wasted


async def test_a_breaker_open_past_the_budget_means_retry_later_at_once_without_a_call() -> None:
    handler, seen = scripted(httpx.Response(503))
    async with client(
        handler,
        scx_retry_attempts=1,
        scx_retry_budget=0.5,
        scx_breaker_failures=1,
        scx_breaker_cooldown=30,
    ) as scx:
        with pytest.raises(RetryLater):
            await scx.send_ticket(b"{}")
        started = time.monotonic()
        with pytest.raises(RetryLater) as raised:
            await scx.send_ticket(b"{}")
    assert time.monotonic() - started < 0.2
    assert raised.value.attempts == 0
    assert raised.value.reason.startswith("circuit open")
    assert len(seen) == 1


async def test_rejections_and_429s_do_not_open_the_breaker() -> None:
    handler, _ = scripted(
        httpx.Response(422, json=ERRORS),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(201),
    )
    async with client(handler, scx_breaker_failures=1) as scx:
        with pytest.raises(TicketRejected):
            await scx.send_ticket(b"{}")
        await scx.send_ticket(b"{}")
        assert scx.breaker.state is State.CLOSED


async def test_connection_errors_and_timeouts_are_transient() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path == "/v1/auth":
            return httpx.Response(200, json={"authToken": "t", "expiresIn": 3600})
        calls += 1
        if calls == 1:
            raise httpx.ConnectError("refused", request=request)
        if calls == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200)

    async with client(handler) as scx:
        result = await scx.send_ticket(b"{}")
    assert (result.status, result.attempts) == (200, 3)


async def test_429_retry_after_is_honoured_and_pauses_the_process() -> None:
    handler, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "0.3"}), httpx.Response(201)
    )
    async with client(handler) as scx:
        started = time.monotonic()
        await scx.send_ticket(b"{}")
        waited = time.monotonic() - started
    assert len(seen) == 2
    assert waited >= 0.3


async def test_credentials_rejected_is_not_retried() -> None:
    calls = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, json={"errorList": [{"code": "AUTH", "message": "bad"}]})

    async with client(handler) as scx:
        with pytest.raises(CredentialsRejected):
            await scx.send_ticket(b"{}")
    assert calls == 1


def test_retry_after_reads_seconds_dates_and_rate_limit_headers() -> None:
    def response(status: int, headers: dict[str, str]) -> httpx.Response:
        return httpx.Response(status, headers=headers)

    assert retry_after(response(503, {"Retry-After": "7"})) == 7.0
    assert retry_after(response(503, {"Retry-After": "garbage"})) is None
    dated = retry_after(response(503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
    assert dated == 0.0  # a date in the past means "now"
    limited = {"X-RateLimit-Remaining": "0", "X-RateLimit-Interval-Length-Seconds": "60"}
    assert retry_after(response(429, limited)) == 60.0
    assert retry_after(response(200, limited)) is None
    assert retry_after(response(429, {"X-RateLimit-Remaining": "3"})) is None
