"""The emulator's seller events (``GET``/``DELETE /v1/channel/event``), over real sockets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.support.polling import wait_for
from worker.emulator import Emulator, EmulatorConfig
from worker.emulator.events import seller_event, ticket_reply

EVENTS_URL = "/v1/channel/event"
EN = {"Accept-Language": "en"}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig()) as emulator:
        yield emulator


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.base_url) as client:
        response = await client.post("/v1/auth", data={"refreshToken": "any"})
        client.headers["Authorization"] = f"Bearer {response.json()['authToken']}"
        client.headers.update(EN)
        yield client


def shipping(n: int) -> dict[str, Any]:
    return seller_event(f"evt-{n}", "Seller:Order.Shipping", {"orderId": str(n)})


async def ids(client: httpx.AsyncClient, limit: int = 100) -> list[str]:
    response = await client.get(EVENTS_URL, params={"limit": limit})
    assert response.status_code == 200
    return [item["id"] for item in response.json()["eventList"]]


async def ack(client: httpx.AsyncClient, event_ids: list[str]) -> httpx.Response:
    return await client.request("DELETE", EVENTS_URL, json={"eventIdList": event_ids})


async def test_events_come_in_order_up_to_the_limit_and_stay_hidden_once_served(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.add_events([shipping(n) for n in range(5)])
    assert await ids(client, limit=3) == ["evt-0", "evt-1", "evt-2"]
    assert await ids(client, limit=3) == ["evt-3", "evt-4"]
    assert await ids(client) == []
    ledger = emulator.events.ledger
    assert (ledger.polls, ledger.handed_out, ledger.redelivered) == (3, 5, 0)


async def test_unacknowledged_events_come_again_after_the_visibility_timeout(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.configure(event_visibility=0.3)
    emulator.add_events([shipping(n) for n in range(3)])
    assert await ids(client) == ["evt-0", "evt-1", "evt-2"]
    assert (await ack(client, ["evt-1"])).status_code == 204
    assert await ids(client) == []

    async def again() -> bool:
        return await ids(client) == ["evt-0", "evt-2"]

    await wait_for(again, timeout=5, what="the unacknowledged events again")
    ledger = emulator.events.ledger
    assert ledger.acked_counts == {"evt-1": 1}
    assert ledger.redelivered == 2
    assert emulator.events.pending == 2


async def test_acknowledging_counts_repeats_and_unknown_ids(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.add_events([shipping(1)])
    assert (await ack(client, ["evt-1"])).status_code == 204
    assert (await ack(client, ["evt-1", "nope"])).status_code == 204
    ledger = emulator.events.ledger
    assert (ledger.acked_total, ledger.acked_again, ledger.unknown_acks) == (1, 1, 1)
    assert ledger.ack_calls == 2


@pytest.mark.parametrize(
    "body",
    [
        {"eventIdList": []},
        {"eventIdList": [f"e{n}" for n in range(101)]},
        {"eventIdList": ["ok", 7]},
        {"eventIdList": "evt-1"},
        {"ids": ["evt-1"]},
        [],
    ],
)
async def test_delete_validates_the_id_list(
    emulator: Emulator, client: httpx.AsyncClient, body: object
) -> None:
    emulator.add_events([shipping(1)])
    response = await client.request("DELETE", EVENTS_URL, json=body)
    assert response.status_code == 400
    assert "1 to 100" in response.json()["errorList"][0]["message"]
    assert emulator.events.pending == 1


async def test_delete_accepts_exactly_100_ids(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.add_events([shipping(n) for n in range(100)])
    assert (await ack(client, [f"evt-{n}" for n in range(100)])).status_code == 204
    assert emulator.events.pending == 0


@pytest.mark.parametrize("limit", ["0", "1001", "many"])
async def test_get_validates_the_limit(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get(EVENTS_URL, params={"limit": limit})
    assert response.status_code == 400
    assert response.json()["errorList"][0]["code"] == "VAL100"


async def test_created_after_filters_by_creation_time(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.add_events(
        [
            seller_event("old", "System:Test", {}, created_at="2026-01-01T00:00:00Z"),
            seller_event("new", "System:Test", {}, created_at="2026-06-01T00:00:00+02:00"),
        ]
    )
    response = await client.get(EVENTS_URL, params={"createdAfter": "2026-03-01T00:00:00Z"})
    assert [e["id"] for e in response.json()["eventList"]] == ["new"]


async def test_events_pass_the_channel_gate(emulator: Emulator, client: httpx.AsyncClient) -> None:
    emulator.add_events([shipping(1)])
    emulator.inject("events", 503)
    assert (await client.get(EVENTS_URL)).status_code == 503
    emulator.configure(rate_limit=1, rate_interval=60)
    first = await client.get(EVENTS_URL)
    assert first.headers["X-RateLimit-Remaining"] == "0"
    assert (await ack(client, ["evt-1"])).status_code == 429
    assert emulator.state.channel_calls["events"] == 3
    emulator.configure(rate_limit=None)
    unauthorized = await client.get(EVENTS_URL, headers={"Authorization": "Bearer wrong"})
    assert unauthorized.status_code == 401
    assert emulator.events.pending == 1


async def test_malformed_events_are_served_as_injected(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    broken: list[Any] = [{"type": "System:Test"}, {"id": "x", "event": "{not json"}, 42]
    emulator.add_events(broken)
    response = await client.get(EVENTS_URL)
    assert response.json()["eventList"] == broken


async def test_replies_and_their_files_are_injected_over_the_control_route(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    reply = ticket_reply(
        "r-1",
        seller_id="4711",
        ticket_id="CASE-1",
        message="We sent a new one.",
        attachments=[("label.pdf", "application/pdf")],
    )
    data = b"%PDF-1.4 label"
    injected = await client.post(
        "/_emulator/events",
        json={
            "events": [reply],
            "files": [
                {
                    "sellerId": "4711",
                    "ticketId": "CASE-1",
                    "filename": "label.pdf",
                    "contentType": "application/pdf",
                    "data": base64.b64encode(data).decode(),
                }
            ],
        },
    )
    assert injected.status_code == 200
    assert injected.json()["events"]["pending"] == 1
    assert (await client.get(EVENTS_URL)).json()["eventList"] == [reply]
    download = await client.get(
        "/v1/channel/ticket/attachment",
        params={"sellerId": "4711", "ticketId": "CASE-1", "filename": "label.pdf"},
    )
    assert download.content == data
    assert download.headers["Content-Type"].startswith("application/pdf")
    bad = await client.post("/_emulator/events", json={"events": [], "files": [{"data": "x"}]})
    assert bad.status_code == 400


async def test_visibility_is_changed_over_the_control_route(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    response = await client.post("/_emulator/config", json={"event_visibility": 2.5})
    assert response.json()["event_visibility"] == 2.5
    bad = await client.post("/_emulator/config", json={"event_visibility": -1})
    assert bad.status_code == 400


async def test_reset_clears_the_events(emulator: Emulator, client: httpx.AsyncClient) -> None:
    emulator.add_events([shipping(1)])
    await ids(client)
    emulator.reset()
    assert emulator.events.pending == 0
    assert emulator.events.ledger.polls == 0


async def test_the_state_route_shows_the_ledger(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    emulator.add_events([shipping(1), shipping(2)])
    await ids(client)
    await ack(client, ["evt-2"])
    state = (await client.get("/_emulator/state")).json()["events"]
    assert state["handed_counts"] == {"evt-1": 1, "evt-2": 1}
    assert state["acked_counts"] == {"evt-2": 1}
    assert state["pending"] == 1
    brief = (await client.get("/_emulator/state", params={"bodies": "0"})).json()["events"]
    assert "handed_counts" not in brief
    assert brief["acked_total"] == 1
