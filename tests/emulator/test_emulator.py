"""The SCX API emulator, exercised over real sockets with httpx."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.support.examples import SEED_TICKET
from tests.support.polling import wait_for
from worker.emulator import DROPPED, Emulator, EmulatorConfig, serve

REFRESH_TOKEN = "test-refresh-token"
TICKET_URL = "/v1/channel/ticket"
DOWNLOAD_URL = "/v1/channel/ticket/attachment"
EN = {"Accept-Language": "en"}

VALID = SEED_TICKET
MINIMAL = {k: v for k, v in VALID.items() if k not in {"reference", "replyRequested", "attachment"}}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig(refresh_token=REFRESH_TOKEN)) as emulator:
        yield emulator


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.base_url) as client:
        yield client


async def bearer(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
    assert response.status_code == 200
    return {"Authorization": f"Bearer {response.json()['authToken']}"}


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    return await bearer(client)


def changed(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    ticket = copy.deepcopy(VALID)
    edit(ticket)
    return ticket


async def poll_until(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.02)


def messages(response: httpx.Response) -> list[str]:
    errors = response.json()["errorList"]
    assert errors
    assert all(e["code"] and e["severity"] == "error" and "hint" in e for e in errors)
    return [e["message"] for e in errors]


# --- POST /v1/auth ------------------------------------------------------------------------


async def test_auth_with_form_body_issues_a_token(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.config.token_lifetime = 1.5
    response = await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
    assert response.status_code == 200
    body = response.json()
    assert body["scope"] == "CHANNEL"
    assert len(body["authToken"]) >= 32
    assert body["expiresIn"] == 2
    expire_at = datetime.fromisoformat(body["tokenExpireAt"])
    assert expire_at.utcoffset() is not None
    assert abs(expire_at - (datetime.now(UTC) + timedelta(seconds=1.5))) < timedelta(seconds=1)
    assert (emulator.state.auth_calls, emulator.state.auth_failures) == (1, 0)
    second = await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
    assert second.json()["authToken"] != body["authToken"]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"json": {"refreshToken": REFRESH_TOKEN}}, id="json-body"),
        pytest.param({"data": {"token": REFRESH_TOKEN}}, id="missing-field"),
        pytest.param({"data": {"refreshToken": ""}}, id="empty-field"),
    ],
)
async def test_auth_rejects_malformed_requests(
    emulator: Emulator, client: httpx.AsyncClient, kwargs: dict[str, Any]
) -> None:
    response = await client.post("/v1/auth", **kwargs)
    assert response.status_code == 400
    assert messages(response)
    assert (emulator.state.auth_calls, emulator.state.auth_failures) == (1, 1)


async def test_auth_rejects_wrong_refresh_token(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    response = await client.post("/v1/auth", data={"refreshToken": "not-it"}, headers=EN)
    assert response.status_code == 401
    assert messages(response) == ["invalid refresh token"]
    assert emulator.state.auth_failures == 1


async def test_expired_token_gets_401(emulator: Emulator, client: httpx.AsyncClient) -> None:
    emulator.config.token_lifetime = 0.3
    issued = time.monotonic()
    headers = await bearer(client)
    assert (await client.post(TICKET_URL, json=VALID, headers=headers)).status_code == 201

    async def rejected() -> bool:
        response = await client.post(TICKET_URL, json=VALID, headers=headers)
        return response.status_code == 401

    await poll_until(rejected)
    assert time.monotonic() - issued >= 0.3
    assert emulator.state.unauthorized == 1


# --- POST /v1/channel/ticket ----------------------------------------------------------------


async def test_valid_ticket_is_accepted_and_recorded(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    first = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert first.status_code == 201
    assert first.content == b""
    assert (await client.post(TICKET_URL, json=MINIMAL, headers=auth)).status_code == 201
    state = emulator.state
    assert state.accepted == [VALID, MINIMAL]
    assert state.accepted_counts == {"CASE-01071982": 2}
    assert state.statuses == {201: 2}
    assert state.ticket_calls == 2


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.update(sellerId="a" * 50), id="sellerId-50"),
        pytest.param(lambda t: t.update(sellerId="A_z_09"), id="sellerId-word-chars"),
        pytest.param(lambda t: t.update(ticketId="x" * 256), id="ticketId-256"),
        pytest.param(lambda t: t.update(subject="s" * 1024, message="m"), id="text-limits"),
        pytest.param(lambda t: t["from"].update(name="n" * 100), id="name-100"),
        pytest.param(lambda t: t["from"].pop("name"), id="from-without-name"),
        pytest.param(lambda t: t.update(createdAt="2023-11-07T07:31:56.5+02:00"), id="offset"),
        pytest.param(lambda t: t.update(attachment=VALID["attachment"] * 10), id="10-attachments"),
        pytest.param(lambda t: t.update(attachment=[]), id="no-attachments"),
    ],
)
async def test_boundary_values_are_accepted(
    client: httpx.AsyncClient, auth: dict[str, str], edit: Callable[[dict[str, Any]], object]
) -> None:
    response = await client.post(TICKET_URL, json=changed(edit), headers=auth | EN)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("edit", "path"),
    [
        pytest.param(lambda t: t.pop("sellerId"), "sellerId", id="missing-sellerId"),
        pytest.param(lambda t: t.pop("message"), "message", id="missing-message"),
        pytest.param(lambda t: t["from"].pop("role"), "from.role", id="missing-role"),
        pytest.param(lambda t: t["reference"].pop("id"), "reference.id", id="missing-ref-id"),
        pytest.param(lambda t: t["reference"].pop("type"), "reference.type", id="missing-ref"),
        pytest.param(
            lambda t: t["attachment"][0].pop("contentType"),
            "attachment[0].contentType",
            id="missing-contentType",
        ),
        pytest.param(lambda t: t.update(sellerId="a-b"), "sellerId", id="sellerId-dash"),
        pytest.param(lambda t: t.update(sellerId="abc\n"), "sellerId", id="sellerId-newline"),
        pytest.param(lambda t: t.update(sellerId="Jürgen"), "sellerId", id="sellerId-unicode"),
        pytest.param(lambda t: t.update(sellerId="a" * 51), "sellerId", id="sellerId-51"),
        pytest.param(lambda t: t.update(sellerId=""), "sellerId", id="sellerId-empty"),
        pytest.param(lambda t: t.update(sellerId=4711), "sellerId", id="sellerId-number"),
        pytest.param(lambda t: t.update(ticketId=""), "ticketId", id="ticketId-empty"),
        pytest.param(lambda t: t.update(ticketId="x" * 257), "ticketId", id="ticketId-257"),
        pytest.param(lambda t: t.update(topic="OTHER"), "topic", id="topic-enum"),
        pytest.param(lambda t: t.update(createdAt="yesterday"), "createdAt", id="date-text"),
        pytest.param(
            lambda t: t.update(createdAt="2023-11-07T05:31:56"), "createdAt", id="date-no-offset"
        ),
        pytest.param(lambda t: t["from"].update(role="ADMIN"), "from.role", id="role-enum"),
        pytest.param(lambda t: t["from"].update(name="n" * 101), "from.name", id="name-101"),
        pytest.param(lambda t: t.update(subject=""), "subject", id="subject-empty"),
        pytest.param(lambda t: t.update(message="m" * 1025), "message", id="message-1025"),
        pytest.param(lambda t: t["reference"].update(type="SKU"), "reference.type", id="ref-enum"),
        pytest.param(lambda t: t.update(reference=None), "reference", id="reference-null"),
        pytest.param(lambda t: t.update(replyRequested="yes"), "replyRequested", id="reply-str"),
        pytest.param(
            lambda t: t.update(attachment=VALID["attachment"] * 11), "attachment", id="11-files"
        ),
        pytest.param(
            lambda t: t["attachment"].append({"filename": "", "contentType": "text/plain"}),
            "attachment[1].filename",
            id="filename-empty",
        ),
        pytest.param(
            lambda t: t["attachment"][0].update(contentType="c" * 129),
            "attachment[0].contentType",
            id="contentType-129",
        ),
        pytest.param(lambda t: t.update(priority="high"), "priority", id="extra-top-level"),
        pytest.param(lambda t: t["from"].update(email="d@x"), "from.email", id="extra-in-from"),
        pytest.param(lambda t: t["reference"].update(url="u"), "reference.url", id="extra-in-ref"),
        pytest.param(
            lambda t: t["attachment"][0].update(size=1), "attachment[0].size", id="extra-in-file"
        ),
    ],
)
async def test_schema_violation_is_400_naming_the_field(
    emulator: Emulator,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    edit: Callable[[dict[str, Any]], object],
    path: str,
) -> None:
    response = await client.post(TICKET_URL, json=changed(edit), headers=auth | EN)
    assert response.status_code == 400
    assert [m for m in messages(response) if m.startswith(f"{path}: ")], response.text
    assert response.json()["errorList"][0]["code"] == "VAL100"
    assert emulator.state.accepted == []


async def test_each_violation_gets_its_own_entry(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    ticket = VALID | {"topic": "OTHER", "extra1": 1, "extra2": 2}
    del ticket["subject"]
    response = await client.post(TICKET_URL, json=ticket, headers=auth | EN)
    assert response.status_code == 400
    assert sorted(m.split(":")[0] for m in messages(response)) == [
        "extra1",
        "extra2",
        "subject",
        "topic",
    ]


async def test_non_object_body_is_400(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    response = await client.post(TICKET_URL, json=[VALID], headers=auth | EN)
    assert response.status_code == 400
    assert messages(response)[0].startswith("(body): ")


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b"sellerId=4711", "application/x-www-form-urlencoded", id="form"),
        pytest.param(b'{"sellerId": "4711"', "application/json", id="broken-json"),
        pytest.param(b"NaN", "application/json", id="nan"),
    ],
)
async def test_non_json_body_is_400(
    emulator: Emulator,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    content: bytes,
    content_type: str,
) -> None:
    headers = auth | {"Content-Type": content_type}
    response = await client.post(TICKET_URL, content=content, headers=headers)
    assert response.status_code == 400
    assert messages(response)
    assert emulator.state.statuses == {400: 1}


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-token", "Basic {token}", "{token}"],
)
async def test_ticket_without_valid_bearer_token_is_401(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str], authorization: str | None
) -> None:
    token = auth["Authorization"].removeprefix("Bearer ")
    headers = {} if authorization is None else {"Authorization": authorization.format(token=token)}
    response = await client.post(TICKET_URL, json=VALID, headers=headers)
    assert response.status_code == 401
    assert messages(response)
    assert emulator.state.unauthorized == 1
    assert emulator.state.accepted == []


async def test_revoked_tokens_get_401(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201
    emulator.revoke_tokens()
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 401
    fresh = await bearer(client)
    assert (await client.post(TICKET_URL, json=VALID, headers=fresh)).status_code == 201
    assert emulator.state.statuses == {201: 2, 401: 1}


async def test_request_headers_are_recorded_without_authorization(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await client.post(TICKET_URL, json=VALID, headers=auth | {"X-Request-Id": "abc"})
    recorded = emulator.state.request_headers
    assert recorded["x-request-id"] == "abc"
    assert recorded["content-type"] == "application/json"
    assert "authorization" not in recorded


@pytest.mark.parametrize(
    ("accept_language", "expected"),
    [
        pytest.param(None, "Pflichtfeld sellerId fehlt", id="default-german"),
        pytest.param("de-DE,de;q=0.9", "Pflichtfeld sellerId fehlt", id="german"),
        pytest.param("en", "sellerId: 'sellerId' is a required property", id="english"),
        pytest.param("en-US,en;q=0.9", "sellerId: 'sellerId' is a required property", id="en-US"),
    ],
)
async def test_error_language_follows_accept_language(
    client: httpx.AsyncClient, auth: dict[str, str], accept_language: str | None, expected: str
) -> None:
    headers = auth if accept_language is None else auth | {"Accept-Language": accept_language}
    response = await client.post(
        TICKET_URL, json=changed(lambda t: t.pop("sellerId")), headers=headers
    )
    assert response.status_code == 400
    [error] = response.json()["errorList"]
    assert error["message"] == expected
    english = expected.startswith("sellerId:")
    assert error["hint"] == (
        "Check the field `sellerId`." if english else "Prüfen Sie das Feld `sellerId`."
    )


async def test_unknown_route_and_wrong_method_answer_with_error_list(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/v1/channel/nothing")).json()["errorList"][0]["code"] == "HTTP404"
    response = await client.get(TICKET_URL)
    assert response.status_code == 405
    assert messages(response)


# --- latency, faults, rate limits -----------------------------------------------------------


async def test_latency_delays_answers_and_concurrency_is_measured(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.config.latency = 0.3
    started = time.monotonic()
    responses = await asyncio.gather(
        *(client.post(TICKET_URL, json=VALID, headers=auth) for _ in range(3))
    )
    assert time.monotonic() - started >= 0.3
    assert [r.status_code for r in responses] == [201] * 3
    assert emulator.state.max_concurrent_ticket_calls == 3


async def test_injected_503_comes_first_without_validation(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.inject("ticket", 503, count=2, retry_after=0.5)
    for _ in range(2):
        response = await client.post(TICKET_URL, json={}, headers=EN)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert messages(response) == ["fault injected by the emulator"]
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201
    assert emulator.state.statuses == {503: 2, 201: 1}
    assert emulator.state.accepted == [VALID]


async def test_without_a_configured_refresh_token_any_non_empty_one_is_accepted() -> None:
    async with Emulator() as emulator, httpx.AsyncClient(base_url=emulator.base_url) as client:
        assert (await client.post("/v1/auth", data={"refreshToken": "x"})).status_code == 200
        assert (await client.post("/v1/auth", data={"refreshToken": ""})).status_code == 400


@pytest.mark.parametrize(("rate", "expected_failures"), [(0.0, 0), (1.0, 20)])
async def test_fail_rate_answers_that_share_of_ticket_calls_with_fail_status(
    emulator: Emulator,
    client: httpx.AsyncClient,
    auth: dict[str, str],
    rate: float,
    expected_failures: int,
) -> None:
    emulator.configure(fail_rate=rate, fail_status=502)
    for _ in range(20):
        await client.post(TICKET_URL, json=VALID, headers=auth)
    assert emulator.state.statuses[502] == expected_failures
    assert len(emulator.state.accepted) == 20 - expected_failures


async def test_a_random_fail_rate_fails_about_that_share(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(fail_rate=0.5)
    for _ in range(200):
        await client.post(TICKET_URL, json=VALID, headers=auth)
    # Binomial(200, 0.5): outside 60..140 has a probability below 1e-8.
    assert 60 <= emulator.state.statuses[503] <= 140


async def test_injected_429_carries_rate_limit_headers(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.inject("ticket", 429, retry_after=1.2)
    emulator.inject("ticket", 429)
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.headers["X-RateLimit-Limit"] == "60"
    assert response.headers["X-RateLimit-Interval-Length-Seconds"] == "60"
    emulator.config.rate_limit = 5
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 429
    assert "Retry-After" not in response.headers
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "0"


async def test_injected_auth_failures(emulator: Emulator, client: httpx.AsyncClient) -> None:
    emulator.inject("auth", 429, retry_after=3)
    emulator.inject("auth", 503)
    form = {"refreshToken": REFRESH_TOKEN}
    limited = await client.post("/v1/auth", data=form)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "3"
    assert limited.headers["X-RateLimit-Limit"] == "10"
    assert (await client.post("/v1/auth", data=form)).status_code == 503
    assert (await client.post("/v1/auth", data=form)).status_code == 200
    assert (emulator.state.auth_calls, emulator.state.auth_failures) == (3, 2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"route": "orders", "status": 503},
        {"route": "ticket", "status": 201},
        {"route": "ticket", "status": True},
        {"route": "ticket", "status": 503, "count": 0},
        {"route": "ticket", "status": 503, "retry_after": -1},
    ],
)
def test_inject_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Emulator().inject(**kwargs)


async def test_rate_limit_counts_down_then_answers_429(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.config.rate_limit = 3
    remaining = []
    for _ in range(3):
        response = await client.post(TICKET_URL, json=VALID, headers=auth)
        assert response.status_code == 201
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Interval-Length-Seconds"] == "60"
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 59 <= int(response.headers["Retry-After"]) <= 60
    assert messages(response)
    assert len(emulator.state.accepted) == 3
    # Error answers carry the headers too.
    unauthorized = await client.post(TICKET_URL, json=VALID)
    assert unauthorized.headers["X-RateLimit-Limit"] == "3"


async def test_configured_retry_after_is_rounded_up(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.config.rate_limit = 1
    emulator.config.retry_after = 2.5
    await client.post(TICKET_URL, json=VALID, headers=auth)
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"


async def test_rate_window_resets(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.config.rate_limit = 1
    emulator.config.rate_interval = 0.3
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201
    limited = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["X-RateLimit-Interval-Length-Seconds"] == "0.3"

    async def accepted_again() -> bool:
        response = await client.post(TICKET_URL, json=VALID, headers=auth)
        return response.status_code == 201

    await poll_until(accepted_again)
    assert len(emulator.state.accepted) == 2


async def test_no_rate_limit_headers_without_a_limit(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert not [h for h in response.headers if h.lower().startswith("x-ratelimit")]


async def test_reset_clears_state_and_faults(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    await client.post(TICKET_URL, json=VALID, headers=auth)
    emulator.inject("ticket", 503)
    emulator.reset()
    assert emulator.state.accepted == []
    assert emulator.state.ticket_calls == 0
    # Tokens survive a reset; faults do not.
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201


# --- run-time switches: outage, rate windows, token lifetime, the ledger ----------------------


def with_id(ticket_id: str) -> dict[str, Any]:
    return VALID | {"ticketId": ticket_id}


async def test_an_outage_answers_every_call_with_503_and_is_recorded(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    assert (await client.post(TICKET_URL, json=with_id("before"), headers=auth)).status_code == 201
    emulator.configure(outage=True)
    for _ in range(3):
        response = await client.post(TICKET_URL, json=VALID, headers=auth | EN)
        assert response.status_code == 503
        assert messages(response) == ["service temporarily unavailable"]
        assert "Retry-After" not in response.headers
    form = {"refreshToken": REFRESH_TOKEN}
    assert (await client.post("/v1/auth", data=form)).status_code == 503, "auth is down too"
    emulator.configure(outage=False)
    assert (await client.post(TICKET_URL, json=with_id("after"), headers=auth)).status_code == 201

    [outage] = emulator.state.outages
    assert (outage.ticket_calls, outage.auth_calls, outage.statuses) == (3, 1, {503: 4})
    assert outage.ended_at is not None
    assert outage.started_at <= outage.ended_at <= emulator.clock()
    assert outage.recovered_after is not None
    assert 0 <= outage.recovered_after < 5
    assert emulator.state.statuses == {201: 2, 503: 3}
    assert emulator.state.auth_failures == 1
    assert list(emulator.state.accepted_counts) == ["before", "after"]


async def test_an_outage_with_status_429_carries_rate_limit_headers_and_retry_after(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(outage=True, outage_status=429, retry_after=1.5, rate_interval=6)
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.headers["X-RateLimit-Limit"] == "60"
    assert response.headers["X-RateLimit-Interval-Length-Seconds"] == "6"
    emulator.configure(outage_status=502)  # changed while it lasts
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 502
    assert emulator.state.outages[0].statuses == {429: 1, 502: 1}


async def test_an_outage_in_drop_mode_closes_connections_without_an_answer(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(outage=True, outage_mode="drop")
    for _ in range(2):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(TICKET_URL, json=VALID, headers=auth)
    emulator.configure(outage=False)
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201
    assert emulator.state.dropped == 2
    assert emulator.state.outages[0].statuses == {DROPPED: 2}
    assert emulator.state.statuses == {201: 1}, "a dropped call has no status"


async def test_each_outage_is_recorded_on_its_own_and_reset_keeps_a_running_one(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for _ in range(2):
        emulator.configure(outage=True)
        await client.post(TICKET_URL, json=VALID, headers=auth)
        emulator.configure(outage=True)  # switching it on again is not a new outage
        emulator.configure(outage=False)
    assert [o.ticket_calls for o in emulator.state.outages] == [1, 1]
    assert all(o.recovered_after is None for o in emulator.state.outages), "nothing accepted"

    emulator.configure(outage=True)
    emulator.reset()
    assert len(emulator.state.outages) == 1, "still down after a reset, recorded afresh"
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 503


async def test_an_emulator_created_in_an_outage_records_it() -> None:
    async with Emulator(EmulatorConfig(outage=True)) as emulator:
        async with httpx.AsyncClient(base_url=emulator.base_url) as client:
            assert (await client.post(TICKET_URL, json=VALID)).status_code == 503
        assert emulator.state.outages[0].ticket_calls == 1


async def test_latency_changed_at_run_time_applies_to_the_next_call(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(latency=0.3)
    started = time.monotonic()
    await client.post(TICKET_URL, json=VALID, headers=auth)
    assert time.monotonic() - started >= 0.3
    emulator.configure(latency=0)
    started = time.monotonic()
    await client.post(TICKET_URL, json=VALID, headers=auth)
    assert time.monotonic() - started < 0.3


async def test_token_lifetime_changed_at_run_time_applies_to_tokens_issued_from_then_on(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(token_lifetime=0.2)
    short = await bearer(client)

    async def short_one_expired() -> bool:
        response = await client.post(TICKET_URL, json=VALID, headers=short)
        return response.status_code == 401

    await poll_until(short_one_expired)
    # The token issued before the change keeps its hour.
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201
    emulator.configure(token_lifetime=3600)
    response = await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
    assert response.json()["expiresIn"] == 3600


async def test_rate_windows_are_recorded_and_a_new_limit_starts_a_new_window(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(rate_limit=2, rate_interval=60)
    statuses = [
        (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code for _ in range(3)
    ]
    assert statuses == [201, 201, 429]
    emulator.configure(rate_limit=5)
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 201
    assert response.headers["X-RateLimit-Remaining"] == "4", "the new limit has a fresh window"
    emulator.configure(rate_limit=None)  # lifted
    response = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert response.status_code == 201
    assert "X-RateLimit-Limit" not in response.headers
    first, second = emulator.state.rate_windows
    assert (first.limit, first.interval, first.requests, first.accepted, first.limited) == (
        2,
        60,
        3,
        2,
        1,
    )
    assert (second.limit, second.requests, second.accepted, second.limited) == (5, 1, 1, 0)
    assert first.started_at <= second.started_at <= emulator.clock()


async def test_a_sliding_window_is_chosen_over_the_control_route_and_never_resets(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    config = await client.post(
        "/_emulator/config",
        json={"rate_limit": 2, "rate_interval": 2, "rate_algorithm": "sliding"},
    )
    assert config.json()["rate_algorithm"] == "sliding"
    first = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert first.headers["X-RateLimit-Remaining"] == "1"
    first_at = emulator.state.rate_windows[0].started_at
    await wait_for(lambda: emulator.clock() >= first_at + 1.0, what="half the interval")
    second = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert second.headers["X-RateLimit-Remaining"] == "0"
    limited = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"  # the first call leaves within a second

    async def one_back() -> bool:
        response = await client.post(TICKET_URL, json=VALID, headers=auth)
        return response.status_code == 201

    # The first call leaves the count, the second is still in it: one call, not a reset.
    await poll_until(one_back)
    after = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert after.status_code == 429 or after.headers["X-RateLimit-Remaining"] == "0"
    windows = emulator.state.rate_windows
    assert {w.algorithm for w in windows} == {"sliding"}
    assert sum(w.accepted for w in windows) == 3 + (after.status_code == 201)


async def test_a_token_bucket_reports_whole_tokens_on_every_channel_route(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(rate_limit=3, rate_interval=60, rate_algorithm="bucket")
    remaining = [
        (await client.post(TICKET_URL, json=VALID, headers=auth)).headers["X-RateLimit-Remaining"]
        for _ in range(2)
    ]
    query = {"sellerId": "4711", "ticketId": "CASE-1", "filename": "scan.pdf"}
    download = await client.get(DOWNLOAD_URL, params=query, headers=auth)
    assert download.status_code == 404  # no such file, but the call took a token
    assert [*remaining, download.headers["X-RateLimit-Remaining"]] == ["2", "1", "0"]
    limited = await client.post(TICKET_URL, json=VALID, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "20"  # a token every 20 s, the last just spent
    [window] = emulator.state.rate_windows
    assert (window.algorithm, window.requests, window.accepted, window.limited) == (
        "bucket",
        4,
        2,
        1,
    )


async def test_rate_interval_changed_at_run_time_takes_effect(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    emulator.configure(rate_limit=1, rate_interval=60)
    await client.post(TICKET_URL, json=VALID, headers=auth)
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 429
    emulator.configure(rate_interval=0.2)

    async def accepted_again() -> bool:
        response = await client.post(TICKET_URL, json=VALID, headers=auth)
        return response.status_code == 201

    await poll_until(accepted_again)
    assert emulator.state.rate_windows[-1].interval == 0.2


async def test_the_ledger_counts_duplicates_and_when_tickets_were_accepted(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for ticket_id in ("a", "b", "a", "a"):
        await client.post(TICKET_URL, json=with_id(ticket_id), headers=auth)
    state = emulator.state
    assert state.accepted_counts == {"a": 3, "b": 1}
    assert (state.accepted_total, state.duplicates) == (4, 2)
    assert state.first_accepted_at is not None
    assert state.last_accepted_at is not None
    assert 0 < state.first_accepted_at <= state.last_accepted_at <= emulator.clock()


async def test_the_state_route_can_leave_out_the_bodies_but_not_the_counts(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for index in range(50):
        await client.post(TICKET_URL, json=with_id(f"T-{index}"), headers=auth)
    emulator.configure(outage=True, rate_limit=100)
    await client.post(TICKET_URL, json=VALID, headers=auth)
    emulator.configure(outage=False)
    await client.post(TICKET_URL, json=with_id("T-0"), headers=auth)

    full = (await client.get("/_emulator/state")).json()
    assert len(full["accepted"]) == 51
    lean = (await client.get("/_emulator/state", params={"bodies": "0"})).json()
    assert "accepted" not in lean
    assert len(lean["accepted_counts"]) == 50
    assert lean["accepted_counts"]["T-0"] == 2
    assert (lean["accepted_total"], lean["duplicates"]) == (51, 1)
    [outage] = lean["outages"]
    assert (outage["ticket_calls"], outage["statuses"]) == (1, {"503": 1})
    assert outage["recovered_after"] >= 0
    [window] = lean["rate_windows"]
    assert (window["limit"], window["requests"], window["accepted"]) == (100, 1, 1)
    assert lean["clock"] >= outage["ended_at"]


async def test_outage_and_new_limits_are_switched_over_the_control_route(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    config = await client.post("/_emulator/config", json={"outage": True, "outage_mode": "drop"})
    assert config.json()["outage"] is True
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post(TICKET_URL, json=VALID, headers=auth)
    await client.post(
        "/_emulator/config", json={"outage_mode": "status", "outage_status": 500, "latency": 0}
    )
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 500
    await client.post("/_emulator/config", json={"outage": False, "token_lifetime": 7})
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201
    assert emulator.config.token_lifetime == 7
    state = (await client.get("/_emulator/state")).json()
    assert state["outages"][0]["statuses"] == {"0": 1, "500": 1}


@pytest.mark.parametrize(
    "change",
    [
        {"outage": "yes"},
        {"outage": 1},
        {"outage_mode": "sometimes"},
        {"outage_status": 200},
        {"outage_status": True},
        {"fail_status": 302},
        {"fail_rate": 1.5},
        {"token_lifetime": 0},
        {"latency": -1},
        {"rate_limit": 0},
        {"rate_algorithm": "leaky"},
        {"rate_interval": 0},
        {"retry_after": -2},
        {"refresh_token": ""},
    ],
)
async def test_config_rejects_values_out_of_range(
    emulator: Emulator, client: httpx.AsyncClient, change: dict[str, Any]
) -> None:
    before = dataclasses.asdict(emulator.config)
    with pytest.raises(ValueError):
        emulator.configure(**change)
    assert (await client.post("/_emulator/config", json=change)).status_code == 400
    assert dataclasses.asdict(emulator.config) == before
    assert emulator.state.outages == []


# --- control API and serve() ------------------------------------------------------------------


async def test_control_api(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    config = await client.post("/_emulator/config", json={"rate_limit": 10, "latency": 0})
    assert config.status_code == 200
    assert config.json()["rate_limit"] == 10
    assert emulator.config.rate_limit == 10
    for bad in ({"nope": 1}, {"latency": "slow"}, {"rate_limit": 1.5}, [1]):
        assert (await client.post("/_emulator/config", json=bad)).status_code == 400

    injected = await client.post("/_emulator/inject", json={"route": "ticket", "status": 502})
    assert injected.json()["pending_faults"] == {
        "auth": [],
        "ticket": [502],
        "upload": [],
        "download": [],
        "events": [],
    }
    assert (
        await client.post("/_emulator/inject", json={"route": "x", "status": 1})
    ).status_code == 400
    assert (await client.post("/_emulator/inject", json={"status": 502})).status_code == 400
    assert (await client.post("/_emulator/revoke", json={"all": True})).status_code == 400
    assert (await client.post("/_emulator/nothing")).status_code == 404
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 502
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 201

    state = (await client.get("/_emulator/state")).json()
    assert state["accepted"] == [VALID]
    assert state["accepted_counts"] == {"CASE-01071982": 1}
    assert state["statuses"] == {"502": 1, "201": 1}
    assert (state["auth_calls"], state["ticket_calls"]) == (1, 2)

    assert (await client.post("/_emulator/revoke")).status_code == 200
    assert (await client.post(TICKET_URL, json=VALID, headers=auth)).status_code == 401
    assert (await client.post("/_emulator/reset")).status_code == 200
    state = (await client.get("/_emulator/state")).json()
    assert (state["accepted"], state["ticket_calls"], state["unauthorized"]) == ([], 0, 0)


async def test_serve_runs_until_cancelled() -> None:
    urls: list[str] = []
    ready = asyncio.Event()

    def on_ready(url: str) -> None:
        urls.append(url)
        ready.set()

    task = asyncio.create_task(serve(EmulatorConfig(), "127.0.0.1", 0, ready=on_ready))
    await asyncio.wait_for(ready.wait(), timeout=5)
    async with httpx.AsyncClient(base_url=urls[0]) as client:
        response = await client.post("/v1/auth", data={"refreshToken": "demo-refresh-token"})
        assert response.status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with httpx.AsyncClient(base_url=urls[0]) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/_emulator/state")


async def test_download_serves_a_stored_file_behind_the_channel_gate(
    emulator: Emulator, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    stored = emulator.files.put("4711", "CASE-1", "scan.pdf", "application/pdf", b"%PDF-1.7 x")
    query = {"sellerId": "4711", "ticketId": "CASE-1", "filename": "scan.pdf"}
    emulator.config.rate_limit = 5

    response = await client.get(DOWNLOAD_URL, params=query, headers=auth)
    assert response.status_code == 200
    assert response.content == b"%PDF-1.7 x"
    assert response.headers["content-type"].startswith("application/pdf")
    assert response.headers["x-ratelimit-remaining"] == "4", "it shares the channel limit"

    missing = await client.get(DOWNLOAD_URL, params={**query, "filename": "x.pdf"}, headers=auth)
    assert missing.status_code == 404
    assert missing.json()["errorList"][0]["code"] == "NOTFOUND404"
    assert (await client.get(DOWNLOAD_URL, params=query)).status_code == 401
    emulator.inject("download", 503)
    assert (await client.get(DOWNLOAD_URL, params=query, headers=auth)).status_code == 503
    assert emulator.state.channel_calls["download"] == 4
    assert stored.sha256 == emulator.files.to_json()[0]["sha256"]
