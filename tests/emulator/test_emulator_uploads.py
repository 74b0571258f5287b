"""The emulator's upload route and the 409 mode, over real sockets with httpx."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.endpoints import REFRESH_TOKEN
from tests.support.examples import SEED_TICKET
from tests.support.polling import wait_for
from tests.support.processes import spawn
from worker.emulator import Emulator
from worker.emulator.uploads import MAX_FILE_BYTES, allowed_content_type

TICKET_URL = "/v1/channel/ticket"
UPLOAD_URL = "/v1/channel/ticket/attachment"
EN = {"Accept-Language": "en"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


@pytest.fixture
async def client(emulator: Emulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.base_url) as client:
        response = await client.post("/v1/auth", data={"refreshToken": REFRESH_TOKEN})
        client.headers["Authorization"] = f"Bearer {response.json()['authToken']}"
        yield client


def form(
    data: Any = None, *, filename: str = "RedDot.png", content_type: str = "image/png"
) -> dict[str, Any]:
    """The two parts of an upload; ``data`` replaces the attachmentData JSON."""
    if data is None:
        data = {"sellerId": "4711", "ticketId": "CASE-01071982", "filename": filename}
    text = data if isinstance(data, bytes) else orjson.dumps(data)
    return {
        "attachmentData": (None, text, "application/json"),
        "attachment": (filename, PNG, content_type),
    }


async def upload(client: httpx.AsyncClient, files: Any, **kwargs: Any) -> httpx.Response:
    return await client.post(UPLOAD_URL, files=files, **kwargs)


def codes(response: httpx.Response) -> list[str]:
    return [e["code"] for e in response.json()["errorList"]]


async def test_a_file_for_an_accepted_ticket_is_stored_and_served_back(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    emulator.config.rate_limit = 10
    response = await upload(client, form())
    assert response.status_code == 201
    assert response.headers["x-ratelimit-limit"] == "10", "uploads share the channel limit"

    stored = emulator.files.get("4711", "CASE-01071982", "RedDot.png")
    assert stored is not None
    assert (stored.size, stored.sha256) == (len(PNG), hashlib.sha256(PNG).hexdigest())
    assert stored.content_type == "image/png"
    query = {"sellerId": "4711", "ticketId": "CASE-01071982", "filename": "RedDot.png"}
    assert (await client.get(UPLOAD_URL, params=query)).content == PNG

    assert (await upload(client, form())).status_code == 201
    assert emulator.files.duplicates == 1, "a second upload of the same key is counted"
    state = (await client.get("/_emulator/state")).json()
    assert state["files"][0]["stores"] == 2
    assert state["route_statuses"]["upload 201"] == 2


async def test_an_upload_before_its_ticket_or_for_a_name_it_does_not_list_is_refused(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    early = await upload(client, form(), headers=EN)
    assert early.status_code == 404
    assert early.json()["errorList"][0]["message"] == "ticket not found"
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    other_seller = {"sellerId": "4712", "ticketId": "CASE-01071982", "filename": "RedDot.png"}
    assert (await upload(client, form(other_seller))).status_code == 404
    unnamed = await upload(client, form(filename="Other.png"), headers=EN)
    assert unnamed.status_code == 400
    assert "names no attachment Other.png" in unnamed.json()["errorList"][0]["message"]
    assert emulator.files.files == {}


def meta(**changes: str) -> dict[str, str]:
    return {"sellerId": "4711", "ticketId": "T", "filename": "RedDot.png", **changes}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        pytest.param({"ticketId": "T", "filename": "RedDot.png"}, "sellerId", id="no-seller"),
        pytest.param(meta(sellerId="Mëller"), "sellerId", id="non-ascii-seller"),
        pytest.param(meta(ticketId=""), "ticketId", id="empty-ticket"),
        pytest.param(meta(ticketId="x" * 257), "ticketId", id="long-ticket"),
        pytest.param(meta(filename="Red Dot.png"), "filename", id="space"),
        pytest.param(meta(filename="RedDot"), "filename", id="no-extension"),
        pytest.param(meta(filename="a.abcdefghijk"), "filename", id="long-extension"),
        pytest.param(meta(filename="Rüdiger.png"), "filename", id="non-ascii-name"),
        pytest.param(meta(filename="a.png\n"), "filename", id="trailing-newline"),
    ],
)
async def test_attachment_data_is_checked_by_the_api_model(
    client: httpx.AsyncClient, data: dict[str, Any], field: str
) -> None:
    response = await upload(client, form(data), headers=EN)
    assert response.status_code == 400
    assert any(e["message"].startswith(f"{field}:") for e in response.json()["errorList"])


async def test_broken_requests_get_an_error_list_in_german_by_default(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    only_data = {"attachmentData": form()["attachmentData"]}
    missing = await upload(client, only_data)
    assert missing.status_code == 400
    assert missing.json()["errorList"][0]["message"] == "Pflichtteil attachment fehlt"
    only_file = {"attachment": form()["attachment"]}
    assert (
        "required part attachmentData not found"
        in (await upload(client, only_file, headers=EN)).text
    )
    assert (await upload(client, form(b"{not json"))).status_code == 400
    assert (await upload(client, form([1, 2]))).status_code == 400
    as_json = await client.post(UPLOAD_URL, json={"sellerId": "4711"}, headers=EN)
    assert as_json.status_code == 400
    assert "multipart/form-data" in as_json.json()["errorList"][0]["message"]
    bad_type = await upload(client, form(content_type="application/zip"), headers=EN)
    assert bad_type.status_code == 400
    assert codes(bad_type) == ["VAL101"]


def test_allowed_content_types_are_the_apis() -> None:
    for allowed in (
        "text/plain",
        "text/plain; charset=utf-8",
        "application/pdf",
        "application/msword",
        "application/vnd.ms-excel",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "image/png",
        "IMAGE/JPEG",
    ):
        assert allowed_content_type(allowed), allowed
    for refused in ("", "image/", "text/html", "application/zip", "application/octet-stream"):
        assert not allowed_content_type(refused), refused


async def test_a_file_over_16_mib_is_refused_with_413(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    parts = form()
    exact = {**parts, "attachment": ("RedDot.png", b"\0" * MAX_FILE_BYTES, "image/png")}
    assert (await upload(client, exact)).status_code == 201
    over = {**parts, "attachment": ("RedDot.png", b"\0" * (MAX_FILE_BYTES + 1), "image/png")}
    response = await upload(client, over)
    assert response.status_code == 413
    assert codes(response) == ["FILE413"]
    stored = emulator.files.get("4711", "CASE-01071982", "RedDot.png")
    assert stored is not None
    assert stored.size == MAX_FILE_BYTES


async def test_uploads_pass_the_gate_faults_and_token(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    emulator.inject("upload", 503)
    assert (await upload(client, form())).status_code == 503
    emulator.configure(outage=True)
    assert (await upload(client, form())).status_code == 503
    emulator.configure(outage=False)
    anonymous = await upload(client, form(), headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert (await upload(client, form())).status_code == 201
    assert emulator.state.channel_calls["upload"] == 4
    assert emulator.files.duplicates == 0


async def test_a_repeated_ticket_gets_201_by_default_and_409_in_conflict_mode(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    assert emulator.state.duplicates == 1

    config = await client.post("/_emulator/config", json={"conflict_on_duplicate": True})
    assert config.json()["conflict_on_duplicate"] is True
    again = await client.post(TICKET_URL, json=SEED_TICKET, headers=EN)
    assert again.status_code == 409
    assert again.json()["errorList"][0] == {
        "code": "CONFLICT409",
        "message": "ticket already exists",
        "severity": "error",
        "hint": None,
    }
    other_seller = {**SEED_TICKET, "sellerId": "4712"}
    assert (await client.post(TICKET_URL, json=other_seller)).status_code == 201
    assert (emulator.state.conflicts, emulator.state.accepted_total) == (1, 3)
    bad = await client.post("/_emulator/config", json={"conflict_on_duplicate": "yes"})
    assert bad.status_code == 400


async def test_a_fault_can_wait_for_requests_that_pass_first(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    ticket = {
        **SEED_TICKET,
        "attachment": [{"filename": f"f{i}.png", "contentType": "image/png"} for i in range(3)],
    }
    assert (await client.post(TICKET_URL, json=ticket)).status_code == 201
    injected = await client.post(
        "/_emulator/inject", json={"route": "upload", "status": 503, "count": 2, "after": 1}
    )
    assert injected.json()["pending_faults"]["upload"] == [0, 503, 503]
    statuses = [
        (await upload(client, form(filename=f"f{i % 3}.png"))).status_code for i in range(4)
    ]
    assert statuses == [201, 503, 503, 201]
    with pytest.raises(ValueError, match="after"):
        emulator.inject("upload", 503, after=-1)


async def test_the_emulator_command_answers_409_to_a_repeat_with_its_flag(
    unused_tcp_port: int,
) -> None:
    process = await spawn(
        "emulator", "--port", str(unused_tcp_port), "--conflict-on-duplicate", env=dict(os.environ)
    )
    try:
        await wait_for(lambda: process.has_event("emulator.listening"), what="the emulator")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_tcp_port}") as client:
            token = (await client.post("/v1/auth", data={"refreshToken": "r"})).json()
            auth = {"Authorization": f"Bearer {token['authToken']}"}
            first = await client.post(TICKET_URL, json=SEED_TICKET, headers=auth)
            again = await client.post(TICKET_URL, json=SEED_TICKET, headers=auth)
            assert (first.status_code, again.status_code) == (201, 409)
    finally:
        process.process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0


async def test_a_client_gone_mid_upload_stores_nothing(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    port = int(emulator.base_url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {UPLOAD_URL} HTTP/1.1\r\nHost: emulator\r\n"
        f"Authorization: {client.headers['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="attachmentData"\r\n\r\n'
        '{"sellerId": "4711", "ticketId": "CASE-01071982", "filename": "RedDot.png"}\r\n'
        '--b\r\nContent-Disposition: form-data; name="attachment"; filename="RedDot.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    writer.write(head.encode() + PNG[:1000])
    await writer.drain()
    await wait_for(lambda: emulator.state.channel_calls["upload"] == 1, what="the upload")
    writer.transport.abort()
    await wait_for(lambda: emulator.state.route_statuses["upload 400"] == 1, what="its end")
    assert emulator.files.files == {}


async def test_the_random_fail_rate_covers_uploads(
    emulator: Emulator, client: httpx.AsyncClient
) -> None:
    assert (await client.post(TICKET_URL, json=SEED_TICKET)).status_code == 201
    emulator.configure(fail_rate=1.0, fail_status=502)
    assert (await upload(client, form())).status_code == 502
    emulator.configure(fail_rate=0.0)
    assert (await upload(client, form())).status_code == 201
