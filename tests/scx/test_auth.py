"""TokenAuth against httpx.MockTransport: exact request counts, no sockets needed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from pydantic import SecretStr

from tests.support.polling import wait_for
from worker.core.errors import CredentialsRejected, TransientError
from worker.scx.auth import TokenAuth

REFRESH = "refresh-secret-123"


class FakeApi:
    """A scripted API: counts auth calls, issues numbered tokens, answers tickets."""

    def __init__(self, *, lifetime: int = 3600) -> None:
        self.lifetime = lifetime
        self.auth_calls = 0
        self.auth_bodies: list[tuple[str, bytes]] = []
        self.valid: set[str] = set()
        self.auth_status = 200
        self.ticket_auth_headers: list[str] = []
        self.auth_gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth":
            self.auth_calls += 1
            self.auth_bodies.append((request.headers["content-type"], request.content))
            if self.auth_gate is not None:
                await self.auth_gate.wait()
            if self.auth_status != 200:
                return httpx.Response(
                    self.auth_status, json={"errorList": [{"code": "AUTH", "message": "no"}]}
                )
            token = f"token-{self.auth_calls}"
            self.valid.add(token)
            return httpx.Response(
                200,
                json={
                    "scope": "CHANNEL",
                    "authToken": token,
                    "tokenExpireAt": "2030-01-01T00:00:00+00:00",
                    "expiresIn": self.lifetime,
                },
            )
        header = request.headers.get("authorization", "")
        self.ticket_auth_headers.append(header)
        if header.removeprefix("Bearer ") not in self.valid:
            return httpx.Response(401, json={"errorList": [{"code": "401", "message": "expired"}]})
        return httpx.Response(201)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_auth() -> TokenAuth:
    return TokenAuth(
        SecretStr(REFRESH), auth_url="http://scx.test/v1/auth", timeout=httpx.Timeout(5)
    )


def make_client(api: FakeApi, clock: Callable[[], float] | None = None) -> httpx.AsyncClient:
    auth = TokenAuth(
        SecretStr(REFRESH),
        auth_url="http://scx.test/v1/auth",
        timeout=httpx.Timeout(5.0),
        margin=60.0,
        **({"clock": clock} if clock else {}),
    )
    return httpx.AsyncClient(
        base_url="http://scx.test", auth=auth, transport=httpx.MockTransport(api)
    )


async def test_auth_body_is_form_encoded_refresh_token() -> None:
    api = FakeApi()
    async with make_client(api) as client:
        response = await client.post("/v1/channel/ticket", content=b"{}")
    assert response.status_code == 201
    content_type, body = api.auth_bodies[0]
    assert content_type == "application/x-www-form-urlencoded"
    assert parse_qs(body.decode()) == {"refreshToken": [REFRESH]}
    assert api.ticket_auth_headers == ["Bearer token-1"]


async def test_token_is_reused_until_shortly_before_expiry() -> None:
    api, clock = FakeApi(lifetime=3600), Clock()
    async with make_client(api, clock) as client:
        for _ in range(5):
            await client.post("/v1/channel/ticket")
        assert api.auth_calls == 1
        clock.now += 3600 - 61  # still more than the 60 s margin left
        await client.post("/v1/channel/ticket")
        assert api.auth_calls == 1
        clock.now += 2  # inside the margin: refresh before sending
        await client.post("/v1/channel/ticket")
    assert api.auth_calls == 2
    assert api.ticket_auth_headers[-1] == "Bearer token-2"


async def test_short_lifetime_uses_a_proportional_margin() -> None:
    api, clock = FakeApi(lifetime=10), Clock()
    async with make_client(api, clock) as client:
        await client.post("/v1/channel/ticket")
        clock.now += 7.9  # margin is 10 / 5 = 2 s, so the token is still fresh
        await client.post("/v1/channel/ticket")
        assert api.auth_calls == 1
        clock.now += 0.2
        await client.post("/v1/channel/ticket")
    assert api.auth_calls == 2


async def test_concurrent_requests_share_one_refresh() -> None:
    api = FakeApi()
    api.auth_gate = asyncio.Event()
    async with make_client(api) as client:
        requests = [asyncio.create_task(client.post("/v1/channel/ticket")) for _ in range(50)]
        # Let the first request reach /v1/auth while the other 49 queue behind the lock.
        await wait_for(lambda: api.auth_calls == 1, what="the first refresh to start")
        api.auth_gate.set()
        responses = await asyncio.gather(*requests)
    assert [r.status_code for r in responses] == [201] * 50
    assert api.auth_calls == 1


async def test_401_triggers_one_refresh_and_one_resend() -> None:
    api = FakeApi()
    async with make_client(api) as client:
        await client.post("/v1/channel/ticket")
        api.valid.clear()  # the API revokes every token it issued
        response = await client.post("/v1/channel/ticket")
    assert response.status_code == 201
    assert api.auth_calls == 2
    assert api.ticket_auth_headers == ["Bearer token-1", "Bearer token-1", "Bearer token-2"]


async def test_many_concurrent_401s_share_one_refresh() -> None:
    api = FakeApi()
    async with make_client(api) as client:
        await client.post("/v1/channel/ticket")
        api.valid.clear()
        responses = await asyncio.gather(*(client.post("/v1/channel/ticket") for _ in range(20)))
    assert {r.status_code for r in responses} == {201}
    assert api.auth_calls == 2


async def test_second_401_is_returned_not_looped() -> None:
    api = FakeApi()

    async def always_401(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth":
            return await api(request)
        api.ticket_auth_headers.append(request.headers["authorization"])
        return httpx.Response(401)

    auth = plain_auth()
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(always_401)) as client:
        response = await client.post("http://scx.test/v1/channel/ticket")
    assert response.status_code == 401
    assert len(api.ticket_auth_headers) == 2
    assert api.auth_calls == 2


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_rejected_refresh_token_is_fatal_and_remembered(status: int) -> None:
    api = FakeApi()
    api.auth_status = status
    async with make_client(api) as client:
        with pytest.raises(CredentialsRejected) as first:
            await client.post("/v1/channel/ticket")
        with pytest.raises(CredentialsRejected):
            await client.post("/v1/channel/ticket")
    assert api.auth_calls == 1, "a refused refresh token must not be tried again"
    assert REFRESH not in str(first.value)
    assert first.value.exit_code == 3


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_auth_outage_is_transient_and_retried_next_time(status: int) -> None:
    api = FakeApi()
    api.auth_status = status
    async with make_client(api) as client:
        with pytest.raises(TransientError) as raised:
            await client.post("/v1/channel/ticket")
        assert raised.value.status == status
        api.auth_status = 200
        response = await client.post("/v1/channel/ticket")
    assert response.status_code == 201
    assert api.auth_calls == 2


async def test_requests_waiting_on_a_failing_refresh_share_its_failure() -> None:
    api = FakeApi()
    api.auth_status = 503
    api.auth_gate = asyncio.Event()
    async with make_client(api) as client:
        requests = [asyncio.create_task(client.post("/v1/channel/ticket")) for _ in range(20)]
        await wait_for(lambda: api.auth_calls == 1, what="the first refresh to start")
        api.auth_gate.set()
        results = await asyncio.gather(*requests, return_exceptions=True)
        assert all(isinstance(r, TransientError) and r.status == 503 for r in results)
        assert api.auth_calls == 1, "one auth call for the whole wave"
        # The next wave (a retry after backoff) tries again.
        api.auth_status = 200
        assert (await client.post("/v1/channel/ticket")).status_code == 201
    assert api.auth_calls == 2


async def test_auth_answer_without_token_is_transient() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=orjson.dumps({"scope": "CHANNEL"}))

    auth = plain_auth()
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TransientError, match="without a usable token"):
            await client.post("http://scx.test/v1/channel/ticket")


@pytest.mark.parametrize(
    ("answer", "usable"),
    [
        ({"authToken": "t", "tokenExpireAt": "2999-01-01T00:00:00+02:00"}, True),
        ({"authToken": "t", "expiresIn": None, "tokenExpireAt": "2999-01-01T00:00:00Z"}, True),
        ({"authToken": "t", "tokenExpireAt": "2999-01-01T00:00:00"}, False),  # no offset
        ({"authToken": "t", "tokenExpireAt": "2000-01-01T00:00:00Z"}, False),  # expired
        ({"authToken": "t", "expiresIn": 0}, False),
        ({"authToken": "t", "expiresIn": "soon"}, False),
    ],
)
async def test_token_lifetime_from_expires_in_or_token_expire_at(
    answer: dict[str, object], usable: bool
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth":
            return httpx.Response(200, content=orjson.dumps(answer))
        return httpx.Response(201)

    auth = plain_auth()
    async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(handler)) as client:
        if usable:
            assert (await client.post("http://scx.test/v1/channel/ticket")).status_code == 201
        else:
            with pytest.raises(TransientError, match="without a usable token"):
                await client.post("http://scx.test/v1/channel/ticket")
