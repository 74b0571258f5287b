"""ScxClient's upload route and the ticket's 409: over MockTransport and the emulator."""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import httpx
import orjson
import pytest
import structlog
from prometheus_client import REGISTRY
from pydantic import SecretStr

from tests.support.examples import SEED_TICKET
from tests.support.scx import ERRORS, client, scripted
from worker.core.errors import RetryLater, TicketRejected, UploadRejected
from worker.core.settings import Settings
from worker.emulator import Emulator, EmulatorConfig
from worker.forward.delivery import create_ticket
from worker.forward.progress import Steps
from worker.models import Ticket
from worker.scx import ScxClient

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 1000


def parts(request: httpx.Request) -> dict[str, tuple[str | None, str, bytes]]:
    """The request's multipart parts by name: (filename, content type, bytes)."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    found = {}
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        name = part.get_param("name", header="content-disposition")
        found[str(name)] = (part.get_filename(), part.get_content_type(), payload)
    return found


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def upload(scx: ScxClient, file: Any, filename: str = "scan.pdf") -> int:
    uploaded = await scx.upload_attachment("4711", "CASE-1", filename, "application/pdf", file)
    return uploaded.status


async def test_an_upload_is_multipart_with_the_attachment_data_and_the_file() -> None:
    handler, seen = scripted(httpx.Response(201))
    before = metric("scx_forwarder_attachments_uploaded_total")
    answers = REGISTRY.get_sample_value(
        "scx_forwarder_api_requests_total", {"route": "upload", "status_class": "2xx"}
    )
    async with client(handler) as scx:
        assert await upload(scx, io.BytesIO(PDF)) == 201
    assert (
        REGISTRY.get_sample_value(
            "scx_forwarder_api_requests_total", {"route": "upload", "status_class": "2xx"}
        )
        == (answers or 0) + 1
    )
    request = seen[0]
    assert request.url.path == "/v1/channel/ticket/attachment"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.headers["authorization"] == "Bearer t"
    assert request.headers["accept-language"] == "en"
    assert int(request.headers["content-length"]) == len(request.content)
    found = parts(request)
    assert orjson.loads(found["attachmentData"][2]) == {
        "sellerId": "4711",
        "ticketId": "CASE-1",
        "filename": "scan.pdf",
    }
    assert found["attachment"] == ("scan.pdf", "application/pdf", PDF)
    assert metric("scx_forwarder_attachments_uploaded_total") == before + 1


class CountingFile(io.BytesIO):
    """Remembers the largest read: the file must be streamed, not read whole."""

    largest_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.largest_read = max(self.largest_read, len(chunk))
        return chunk


async def test_a_retried_upload_sends_the_whole_file_again_in_chunks() -> None:
    handler, seen = scripted(httpx.Response(503), httpx.Response(201))
    file = CountingFile(PDF)
    async with client(handler) as scx:
        uploaded = await scx.upload_attachment("4711", "CASE-1", "a.pdf", "application/pdf", file)
    assert (uploaded.status, uploaded.attempts) == (201, 2)
    assert [parts(request)["attachment"][2] for request in seen] == [PDF, PDF]
    assert 0 < file.largest_read <= 64 * 1024 < len(PDF)


@pytest.mark.parametrize("status", [400, 404, 409, 413, 415, 422])
async def test_a_non_retryable_4xx_to_an_upload_is_an_upload_rejection(status: int) -> None:
    handler, seen = scripted(httpx.Response(status, json=ERRORS))
    async with client(handler) as scx:
        with pytest.raises(UploadRejected) as raised:
            await upload(scx, io.BytesIO(PDF))
    assert len(seen) == 1
    assert (raised.value.kind, raised.value.status) == ("rejected", status)
    assert raised.value.error_list == ERRORS["errorList"]
    assert raised.value.filename == "scan.pdf"
    assert raised.value.attempts == 1


async def test_transient_upload_failures_end_in_retry_later() -> None:
    handler, seen = scripted(httpx.Response(503))
    async with client(handler, scx_retry_attempts=2) as scx:
        with pytest.raises(RetryLater):
            await upload(scx, io.BytesIO(PDF))
    assert len(seen) == 2


async def test_409_to_a_ticket_comes_back_with_its_error_list_for_the_caller_to_read() -> None:
    handler, _ = scripted(httpx.Response(409, json=ERRORS))
    async with client(handler) as scx:
        result = await scx.send_ticket(b"{}")
    assert (result.status, result.attempts) == (409, 1)
    assert list(result.error_list) == ERRORS["errorList"]


@pytest.mark.parametrize("sent_before", [True, False])
async def test_409_counts_as_created_only_for_a_message_sent_before(sent_before: bool) -> None:
    """The ticket step decides (docs/guides/conversations.md, "The 409 rule")."""
    handler, _ = scripted(httpx.Response(409, json=ERRORS))
    ticket = Ticket.model_validate(SEED_TICKET)
    steps = Steps()
    before = metric("scx_forwarder_tickets_already_created_total")
    async with client(handler) as scx:
        with structlog.testing.capture_logs() as logs:
            if sent_before:
                await create_ticket(scx, ticket, steps, sent_before=True)
            else:
                with pytest.raises(TicketRejected) as raised:
                    await create_ticket(scx, ticket, steps, sent_before=False)
                assert (raised.value.status, raised.value.error_list) == (409, ERRORS["errorList"])
    counted = metric("scx_forwarder_tickets_already_created_total") - before
    assert counted == (1 if sent_before else 0)
    assert ("scx.ticket_already_created" in [e["event"] for e in logs]) is sent_before
    assert (steps.ticket, steps.attempted) == (sent_before, False)


async def test_every_other_4xx_to_a_ticket_stays_rejected() -> None:
    handler, _ = scripted(httpx.Response(410, json=ERRORS))
    async with client(handler) as scx:
        with pytest.raises(TicketRejected) as raised:
            await scx.send_ticket(b"{}")
    assert not isinstance(raised.value, UploadRejected)


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorConfig()) as emulator:
        yield emulator


async def test_a_spooled_file_streams_over_the_aiohttp_transport_to_the_emulator(
    emulator: Emulator,
) -> None:
    settings = Settings(scx_api_url=emulator.base_url, scx_max_requests_per_minute=0)
    names = ("big.pdf", "small.pdf")
    ticket = {
        **SEED_TICKET,
        "attachment": [{"filename": name, "contentType": "application/pdf"} for name in names],
    }
    big = bytes(range(256)) * (5 * 4096)  # 5 MiB: rolled over to disk
    async with ScxClient(settings, SecretStr("r")) as scx:
        assert (await scx.send_ticket(orjson.dumps(ticket))).status == 201
        with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as large:
            large.write(big)
            emulator.inject("upload", 502)  # the retry streams it again from the start
            uploaded = await scx.upload_attachment(
                "4711", "CASE-01071982", "big.pdf", "application/pdf", large
            )
            assert (uploaded.status, uploaded.attempts) == (201, 2)
        with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as small:
            small.write(PDF)
            await scx.upload_attachment(
                "4711", "CASE-01071982", "small.pdf", "application/pdf", small
            )
            rolled = small._rolled  # type: ignore[attr-defined]
            assert not rolled, "measuring the body must not move it to disk"
        assert (await scx.send_ticket(orjson.dumps(ticket))).status == 201
    stored = {f["filename"]: f for f in emulator.files.to_json()}
    assert stored["big.pdf"]["sha256"] == hashlib.sha256(big).hexdigest()
    assert stored["small.pdf"]["sha256"] == hashlib.sha256(PDF).hexdigest()
    assert emulator.files.duplicates == 0
