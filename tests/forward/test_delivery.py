"""Attachments end to end: real RabbitMQ, the emulator over HTTP, a local file server as the
object store, the forwarder in process. What a seller would see: the files in SCX, once."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY

from tests.support.broker import Names, collect, no_leftovers, publish, queue_depth
from tests.support.fileserver import FileServer
from tests.support.forwarder import StartWorker
from tests.support.outcomes import data_of, read_outcome
from tests.support.polling import wait_for
from tests.support.settings import make_settings
from worker.emulator import Emulator
from worker.forward.attachments import spool_directory
from worker.ops import dlq
from worker.ops.samples import valid_event

PNG = b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(700 * 1024)  # rolls over to disk
PDF = b"%PDF-1.7\n" + random.Random(2).randbytes(40 * 1024)
TEXT = "Grüße aus dem Lager\n".encode() * 50


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    server = await FileServer().start()
    yield server
    await server.stop()


def allowed(files: FileServer) -> tuple[str, ...]:
    return tuple(
        f"{files.base}/{prefix}/" for prefix in ("files", "status", "chunked", "declares", "to")
    )


def event(index: int, attachments: list[dict[str, Any]], **data: Any) -> bytes:
    body = valid_event(index, random.Random(index))
    body["data"].update(attachments=attachments, **data)
    return orjson.dumps(body)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored(emulator: Emulator) -> dict[str, dict[str, Any]]:
    return {f["filename"]: f for f in emulator.files.to_json()}


def uploads(emulator: Emulator) -> int:
    return emulator.state.channel_calls["upload"]


def open_spool_files() -> list[str]:
    """This process's open files in the worker's spool directory (unnamed ones included)."""
    where = str(spool_directory())
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(where):
            found.append(target)
    return found


def detail(message: AbstractIncomingMessage) -> dict[str, Any]:
    headers = message.headers or {}
    raw = headers["x-error-detail"]
    assert isinstance(raw, str | bytes)
    parsed = orjson.loads(raw)
    assert isinstance(parsed, dict)
    return parsed


async def peek(amqp: AbstractRobustConnection, queue: str) -> AbstractIncomingMessage:
    """The first message of ``queue``, left there (taken unacked, the channel closed)."""
    looking = await amqp.channel()
    try:
        declared = await looking.declare_queue(queue, passive=True)
        message = await declared.get(no_ack=False)
        assert message is not None
        return message
    finally:
        await looking.close()


def three_files(files: FileServer, index: int) -> list[dict[str, Any]]:
    return [
        {"filename": "Red Dot (1).png", "content_type": "image/png",
         "url": files.put(f"files/{index}/red-dot.png", PNG)},
        {"filename": "Rechnung März.pdf", "content_type": "application/pdf",
         "content_base64": base64.b64encode(PDF).decode()},
        {"filename": "notes.txt", "content_type": "text/plain",
         "url": files.put(f"files/{index}/notes.txt", TEXT, "text/plain")},
    ]  # fmt: skip


async def test_files_arrive_byte_identical_under_the_names_the_ticket_gives(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker(attachment_allowed_urls=allowed(files))
    attachments = [
        *three_files(files, 1),
        {"filename": "only-named.png", "content_type": "image/png"},
    ]
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(1, attachments)])
        await wait_for(lambda: len(stored(emulator)) == 3, what="3 files stored")

    [ticket] = emulator.state.accepted
    named = [a["filename"] for a in ticket["attachment"]]
    assert len(named) == 4
    assert named[3] == "only-named.png", "a name without a source is sent, nothing uploaded"
    got = stored(emulator)
    assert set(got) == set(named[:3]), "the upload names are the ticket's names"
    for name in named[:3]:
        assert re.fullmatch(r"\w+\.\w{1,10}", name, re.ASCII), name
    assert [got[n]["sha256"] for n in named[:3]] == [sha(PNG), sha(PDF), sha(TEXT)]
    assert [got[n]["contentType"] for n in named[:3]] == [
        "image/png",
        "application/pdf",
        "text/plain",
    ]
    # The emulator answers 404 to an upload before its ticket: none happened.
    assert emulator.state.route_statuses["upload 201"] == 3
    assert sum(n for k, n in emulator.state.route_statuses.items() if k.startswith("upload")) == 3
    assert (emulator.state.ticket_calls, emulator.files.duplicates) == (1, 0)
    assert await queue_depth(amqp, names.dlq) == 0
    seen = [s for s in files.seen if s.path.startswith("/files/")]
    assert all("authorization" not in {k.lower() for k in s.headers} for s in seen)
    await wait_for(lambda: not open_spool_files(), what="temporary files closed")


@pytest.mark.parametrize("status", [503])
async def test_a_503_on_the_second_of_three_uploads_resumes_without_duplicates(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    status: int,
) -> None:
    # Two attempts in process, both 503: the message goes to the delay stage with its
    # progress (ticket created, first file uploaded) and resumes from there.
    await start_worker(attachment_allowed_urls=allowed(files), scx_retry_attempts=2)
    emulator.inject("upload", status, count=2, after=1)
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(2, three_files(files, 2))])
        await wait_for(lambda: len(stored(emulator)) == 3, what="3 files stored")

    assert emulator.state.ticket_calls == 1, "the ticket was not created twice"
    assert emulator.files.duplicates == 0, "no file was uploaded twice"
    assert uploads(emulator) == 5  # 1 + 2 refused + the 2 left
    assert emulator.state.route_statuses[f"upload {status}"] == 2
    first_file = [s for s in files.seen if s.path == "/files/2/red-dot.png"]
    assert len(first_file) == 1, "a file uploaded before is not downloaded again"
    assert await queue_depth(amqp, names.dlq) == 0
    await wait_for(lambda: not open_spool_files(), what="temporary files closed")


async def test_a_400_on_an_upload_is_rejected_with_what_exists_and_a_replay_sends_the_rest(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker(attachment_allowed_urls=allowed(files))
    emulator.inject("upload", 400, after=1)
    await publish(channel, names, [event(3, three_files(files, 3))], message_id="m-400")

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, names.dlq) == 1

    await wait_for(dead_lettered, what="the dead-letter")
    dead = await peek(amqp, names.dlq)

    headers = dead.headers or {}
    assert headers["x-error-kind"] == "rejected"
    assert "the ticket exists" in str(headers["x-error-reason"])
    found = detail(dead)
    assert found["ticket"] == "created"
    assert [f["originalFilename"] for f in found["uploaded"]] == ["Red Dot (1).png", "notes.txt"]
    [refused] = found["refused"]
    assert refused["originalFilename"] == "Rechnung März.pdf"
    assert refused["status"] == 400
    assert refused["errorList"][0]["code"] == "EMU400"
    assert (found["status"], found["errorList"]) == (400, refused["errorList"])
    progress = orjson.loads(headers["x-scx-progress"])  # type: ignore[arg-type]
    uploaded = [f["filename"] for f in found["uploaded"]]
    assert progress == {"message": "evt-000003", "ticket": True, "uploaded": uploaded}
    assert headers["x-attempts"] == 4  # the ticket and three uploads
    assert len(stored(emulator)) == 2

    # Put it back as an operator would (after whatever cured the refusal): dlq replay.
    settings = make_settings(names, emulator)
    outcome = await dlq.replay(settings, dlq.Filter(kind="rejected"))
    assert outcome.acted == 1
    await wait_for(lambda: len(stored(emulator)) == 3, what="the missing file")
    assert emulator.state.ticket_calls == 1, "replay did not create the ticket again"
    assert emulator.files.duplicates == 0, "replay uploaded only the missing file"
    assert refused["filename"] in stored(emulator)
    assert await queue_depth(amqp, names.dlq) == 0


REFUSALS = {
    # message id: (the attachment's fields, the refusal type the dead-letter detail names)
    "outside": ({"url": "http://127.0.0.2:9/files/a.png"}, "source_refused"),
    "dotdot": ({"url": "{base}/files/../secret/a.png"}, "source_refused"),
    "userinfo": ({"url": "http://user:pw@127.0.0.1:{port}/files/a.png"}, "source_refused"),
    "redirect": ({"url": "{base}/to/?location={base}/secret/a.png"}, "redirect_refused"),
    "403": ({"url": "{base}/status/403"}, "source_status"),
    "404": ({"url": "{base}/status/404"}, "source_status"),
    "too-big-undeclared": (
        {"url": "{base}/chunked/3000000", "content_type": "text/plain"},
        "too_large",
    ),
    "too-big-declared": ({"url": "{base}/declares/3000000"}, "too_large"),
    "served-type": (
        {"url": "{base}/files/page.html", "content_type": "text/plain"},
        "content_type",
    ),
    "declared-type": (
        {"url": "{base}/files/a.zip", "content_type": "application/zip"},
        "content_type",
    ),
    "bad-base64": ({"content_base64": "not base64!"}, "base64"),
    "bad-name": ({"filename": "().png", "content_base64": "aGk="}, "name"),
}


async def test_a_source_that_can_never_work_is_invalid_before_any_scx_call(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    names: Names,
) -> None:
    await start_worker(attachment_allowed_urls=allowed(files), attachment_max_bytes=1_000_000)
    files.put("files/page.html", b"<html></html>", "text/html")
    for message_id, (source, _) in REFUSALS.items():
        filled = {
            key: value.format(base=files.base, port=files.port) for key, value in source.items()
        }
        attachment = {"filename": "a.png", "content_type": "image/png", **filled}
        await publish(channel, names, [event(4, [attachment])], message_id=message_id)
    dead = {str(m.message_id): m for m in await collect(channel, names.dlq, len(REFUSALS))}

    for message_id, (_, kind) in REFUSALS.items():
        headers = dead[message_id].headers or {}
        assert headers["x-error-kind"] == "invalid", message_id
        assert headers["x-attempts"] == 0, message_id
        assert kind in str(headers["x-error-detail"]), (message_id, headers)
        assert "x-scx-progress" not in headers
    assert emulator.state.channel_calls == {}, "not one SCX call, not even for a token"
    assert emulator.state.auth_calls == 0
    assert not [s for s in files.seen if s.path.startswith("/secret")]
    await wait_for(lambda: not open_spool_files(), what="temporary files closed")


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.parametrize("conflict", [False, True], ids=["201-again", "409"])
async def test_a_ticket_sent_again_goes_on_to_its_uploads_whatever_the_api_answers(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    conflict: bool,
) -> None:
    """Without a progress record a retried ticket is sent again: 201 or 409, never DLQ.

    (A 409 to a message with no sign of an earlier attempt is another matter:
    tests/test_conversations.py.)"""
    emulator.configure(conflict_on_duplicate=conflict)
    await start_worker(attachment_allowed_urls=allowed(files))
    before = metric("scx_forwarder_tickets_already_created_total")
    body = event(5, three_files(files, 5)[:1])
    async with no_leftovers(amqp, names):
        await publish(channel, names, [body])
        await wait_for(lambda: uploads(emulator) == 1, what="the first upload")
        # The same message again, back from the delay stage.
        await publish(channel, names, [body], headers={"x-retry-count": 1})
        await wait_for(lambda: uploads(emulator) == 2, what="the second upload")
        await wait_for(lambda: emulator.state.ticket_calls == 2, what="two ticket calls")

    assert await queue_depth(amqp, names.dlq) == 0
    assert emulator.files.duplicates == 1
    if conflict:
        assert (emulator.state.conflicts, emulator.state.accepted_total) == (1, 1)
        assert metric("scx_forwarder_tickets_already_created_total") == before + 1
    else:
        assert (emulator.state.conflicts, emulator.state.duplicates) == (0, 1)
        assert metric("scx_forwarder_tickets_already_created_total") == before


async def test_the_worker_clears_its_spool_directory_at_start(
    start_worker: StartWorker, tmp_path: Path
) -> None:
    leftover = spool_directory() / "left-by-a-crash.tmp"
    leftover.write_bytes(b"x")
    await start_worker()
    assert not leftover.exists()


async def test_a_worker_stopped_between_uploads_hands_the_message_back_with_its_progress(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    # Paced at one call in 2 s, the second upload waits for its slot when the stop comes.
    first = await start_worker(
        attachment_allowed_urls=allowed(files), scx_max_requests_per_minute=30
    )
    await publish(channel, names, [event(6, three_files(files, 6))])
    await wait_for(lambda: len(stored(emulator)) == 1, what="the first file")
    assert await first.stop() == 0

    back = await peek(amqp, names.queue)
    progress = orjson.loads((back.headers or {})["x-scx-progress"])  # type: ignore[arg-type]
    assert progress == {"message": "evt-000006", "ticket": True, "uploaded": list(stored(emulator))}
    await start_worker(attachment_allowed_urls=allowed(files))
    await wait_for(lambda: len(stored(emulator)) == 3, what="the other files")
    assert (emulator.state.ticket_calls, emulator.files.duplicates) == (1, 0)
    assert await queue_depth(amqp, names.dlq) == 0


async def test_worker_attachment_concurrency_bounds_the_messages_holding_files(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    names: Names,
) -> None:
    await start_worker(attachment_allowed_urls=allowed(files), worker_attachment_concurrency=2)
    emulator.configure(latency=0.1)
    inline = {"content_type": "text/plain", "content_base64": base64.b64encode(TEXT).decode()}
    bodies = [
        event(30 + i, [{"filename": f"n{n}.txt", **inline} for n in range(2)]) for i in range(6)
    ]
    await publish(channel, names, bodies)
    await wait_for(lambda: len(emulator.files.files) == 12, what="every file")
    # Each message makes one call at a time: the API never saw more than two at once.
    assert emulator.state.max_concurrent_ticket_calls == 2


async def test_the_outcome_event_of_a_ticket_with_files_names_them(
    start_worker: StartWorker,
    emulator: Emulator,
    files: FileServer,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    outcome_queue: str,
) -> None:
    await start_worker(
        attachment_allowed_urls=allowed(files), worker_outcome_events=True, scx_retry_attempts=1
    )
    emulator.inject("upload", 503, after=1)  # the second file fails once: a delay, then resume
    async with no_leftovers(amqp, names):
        await publish(channel, names, [event(7, three_files(files, 7))], message_id="m-files")
        [outcome] = await collect(channel, outcome_queue, 1)
    data = data_of(read_outcome(outcome))
    assert data["files"] == [a["filename"] for a in emulator.state.accepted[0]["attachment"]]
    assert (data["status"], data["ticket_id"]) == (201, "T-000007")
    assert data["attempts"] == 2, "this delivery: the two uploads left, the ticket not again"
    assert (emulator.state.ticket_calls, emulator.files.duplicates) == (1, 0)
