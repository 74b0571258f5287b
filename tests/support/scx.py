"""An ScxClient over httpx.MockTransport with scripted answers: exact, no sockets."""

from __future__ import annotations

from collections.abc import Callable, Coroutine

import httpx
from pydantic import SecretStr

from worker.core.settings import Settings
from worker.scx import ScxClient

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
ERRORS = {"errorList": [{"code": "VAL100", "message": "bad", "severity": "error", "hint": None}]}


def settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "scx_api_url": "http://scx.test",
        "scx_max_requests_per_minute": 0,
        "scx_retry_attempts": 4,
        "scx_retry_budget": 10.0,
        "scx_retry_initial_wait": 0.001,
        "scx_retry_max_wait": 0.01,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def scripted(*ticket_answers: httpx.Response) -> tuple[Handler, list[httpx.Request]]:
    """Auth always succeeds; ticket calls get the answers in order, then the last forever."""
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/auth":
            return httpx.Response(200, json={"authToken": "t", "expiresIn": 3600})
        seen.append(request)
        return ticket_answers[min(len(seen), len(ticket_answers)) - 1]

    return handler, seen


def client(handler: Handler, **overrides: object) -> ScxClient:
    return ScxClient(settings(**overrides), SecretStr("r"), transport=httpx.MockTransport(handler))
