"""A ticket is a conversation: every message of it reaches the seller once, with its own files.

Through the real parts (RabbitMQ, Redis, the emulator over HTTP, the forwarder in process).
What a seller would see is read from the emulator's conversation ledger and its file store.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from tests.support.broker import Names, no_leftovers, publish, queue_depth
from tests.support.conversations import SELLER, conversation, files_of, message, upload_name
from tests.support.endpoints import REDIS_URL
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.settings import make_settings
from worker.core.errors import ShuttingDown
from worker.emulator import Emulator
from worker.forward.attachments.names import UPLOAD_NAME, NameRequest, assign_names
from worker.forward.identity import MessageIdentity, message_identity
from worker.forward.turns import Turns
from worker.ops import dlq


async def dead_letters(amqp: AbstractRobustConnection, queue: str) -> list[AbstractIncomingMessage]:
    """Every message in ``queue``, handed back afterwards (the channel closes unacked)."""
    peeking = await amqp.channel()
    try:
        declared = await peeking.declare_queue(queue, passive=True)
        found = []
        while (got := await declared.get(no_ack=False, fail=False)) is not None:
            found.append(got)
        return found
    finally:
        await peeking.close()


@pytest.mark.parametrize("record", [False, True], ids=["without-redis", "with-redis"])
async def test_every_message_of_a_conversation_arrives_once_with_its_own_files(
    record: bool,
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    redis_prefix: str,
) -> None:
    """The issue's report: with Redis, messages 2 and 3 were skipped as "done before"; in
    both modes the two ``note.txt`` overwrote each other."""
    options: dict[str, Any] = (
        {"worker_state_redis_url": REDIS_URL, "worker_state_key_prefix": redis_prefix}
        if record
        else {}
    )
    await start_worker(**options)
    tickets = [f"CASE-{n}" for n in range(3)]
    bodies = []
    for ticket in tickets:
        bodies += [
            message(ticket, f"{ticket}-q", 1, {"note.txt": f"{ticket} question".encode()}),
            message(ticket, f"{ticket}-a", 2, {"note.txt": f"{ticket} answer".encode()}),
            message(ticket, f"{ticket}-s", 3, role="CHANNEL", text="from the marketplace staff"),
        ]
    async with no_leftovers(amqp, names):
        await publish(channel, names, bodies)
        await wait_for(lambda: emulator.state.accepted_total == 9, what="nine messages")
        await wait_for(lambda: len(emulator.files.files) == 6, what="six files")

    for ticket in tickets:
        held = conversation(emulator, ticket)
        assert sorted(m.body["message"] for m in held.messages) == [
            "from the marketplace staff",
            f"message {ticket}-a",
            f"message {ticket}-q",
        ]
        assert [m.posts for m in held.messages] == [1, 1, 1], "every message once"
        assert files_of(emulator, ticket) == {
            upload_name("note.txt", f"{ticket}-q"): f"{ticket} question".encode(),
            upload_name("note.txt", f"{ticket}-a"): f"{ticket} answer".encode(),
        }, "each file under its own name, with its own bytes"
    assert emulator.state.duplicates == 0
    assert emulator.files.duplicates == 0
    assert await queue_depth(amqp, names.dlq) == 0


async def test_the_conversation_is_shown_with_its_messages_and_files(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker()
    async with no_leftovers(amqp, names):
        await publish(channel, names, [message("CASE-V", "v-1", 1, {"a.txt": b"one"})])
        await wait_for(lambda: len(emulator.files.files) == 1, what="the file")
        await publish(channel, names, [message("CASE-V", "v-2", 2, {"a.txt": b"two"})])
        await wait_for(lambda: len(emulator.files.files) == 2, what="the second file")
    async with httpx.AsyncClient(base_url=emulator.base_url) as http:
        shown = (await http.get("/_tickets")).json()
        assert shown == (await http.get("/_emulator/tickets")).json()
    [case] = shown["conversations"]
    assert (case["sellerId"], case["ticketId"]) == (SELLER, "CASE-V")
    assert [m["message"] for m in case["messages"]] == ["message v-1", "message v-2"]
    assert [m["attachment"] for m in case["messages"]] == [
        [upload_name("a.txt", "v-1")],
        [upload_name("a.txt", "v-2")],
    ]
    assert sorted(f["filename"] for f in case["files"]) == sorted(
        [upload_name("a.txt", "v-1"), upload_name("a.txt", "v-2")]
    )


async def test_a_409_to_the_first_attempt_of_a_follow_up_is_dead_lettered_not_acked(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    """SCX answering every repeated ticketId with 409: the follow-up is not "already created"."""
    emulator.configure(conflict_on_duplicate=True)
    await start_worker()
    await publish(channel, names, [message("CASE-409", "q-1", 1, {"n.txt": b"question"})])
    await wait_for(lambda: len(emulator.files.files) == 1, what="the first message")
    await publish(channel, names, [message("CASE-409", "q-2", 2, {"n.txt": b"answer"})])

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, names.dlq) == 1

    await wait_for(dead_lettered, what="the follow-up in the DLQ")
    [dead] = await dead_letters(amqp, names.dlq)
    headers = dead.headers or {}
    assert headers["x-error-kind"] == "rejected"
    assert "409" in str(headers["x-error-reason"])
    detail = orjson.loads(str(headers["x-error-detail"]))
    assert detail["status"] == 409
    assert detail["errorList"][0]["code"] == "CONFLICT409", "the API's own errorList"
    assert (headers["x-scx-message-id"], headers["x-scx-ticket-id"]) == ("q-2", "CASE-409")
    assert "x-scx-progress" not in headers, "a refused ticket call left nothing done"
    assert emulator.state.channel_calls["upload"] == 1, "no upload for a refused message"
    assert len(conversation(emulator, "CASE-409").messages) == 1


async def test_a_409_to_a_message_sent_before_counts_as_created_and_its_files_follow(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    """The same message back from the delay stage (``x-retry-count``) meets a 409: its own."""
    emulator.configure(conflict_on_repeated_message=True)
    await start_worker()
    body = message("CASE-R", "r-1", 1, {"n.txt": b"question"})
    async with no_leftovers(amqp, names):
        await publish(channel, names, [body])
        await wait_for(lambda: len(emulator.files.files) == 1, what="the first delivery")
        # Its file is lost in SCX's store: only a later attempt of the message can bring it.
        emulator.files.clear()
        await publish(channel, names, [body], headers={"x-retry-count": 1})
        await wait_for(lambda: len(emulator.files.files) == 1, what="the file again")
    held = conversation(emulator, "CASE-R")
    assert [(m.posts, m.conflicts) for m in held.messages] == [(1, 1)], "one message, one 409"
    assert await queue_depth(amqp, names.dlq) == 0, "the 409 was read as this message's own"

    # The same message published afresh (no sign of an earlier attempt) is not so trusted.
    await publish(channel, names, [body])

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, names.dlq) == 1

    await wait_for(dead_lettered, what="the unproven repeat in the DLQ")
    [dead] = await dead_letters(amqp, names.dlq)
    assert (dead.headers or {})["x-error-kind"] == "rejected"


async def test_a_follow_up_published_while_the_first_message_waits_in_the_delay_stage(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker(scx_retry_attempts=1, worker_retry_delays=(2.0,))
    emulator.inject("ticket", 503)
    async with no_leftovers(amqp, names):
        await publish(channel, names, [message("CASE-D", "d-1", 1, {"n.txt": b"first"})])
        delayed = names.queue + ".retry.2s"

        async def waiting() -> bool:
            return await queue_depth(amqp, delayed) == 1

        await wait_for(waiting, what="the first message in the delay stage")
        await publish(channel, names, [message("CASE-D", "d-2", 2, {"n.txt": b"second"})])
        await wait_for(lambda: emulator.state.accepted_total == 2, what="both messages")
        await wait_for(lambda: len(emulator.files.files) == 2, what="both files")
    held = conversation(emulator, "CASE-D")
    # No order across the delay stage: the follow-up went first; each keeps its createdAt.
    assert [m.body["createdAt"] for m in held.messages] == [
        "2026-11-27T10:02:00Z",
        "2026-11-27T10:01:00Z",
    ]
    assert [m.posts for m in held.messages] == [1, 1]
    assert files_of(emulator, "CASE-D") == {
        upload_name("n.txt", "d-1"): b"first",
        upload_name("n.txt", "d-2"): b"second",
    }
    assert emulator.state.statuses[503] == 1
    assert await queue_depth(amqp, names.dlq) == 0


async def test_dlq_replay_of_a_follow_up_sends_only_its_missing_files(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    await start_worker()
    await publish(channel, names, [message("CASE-P", "p-1", 1, {"n.txt": b"question"})])
    await wait_for(lambda: len(emulator.files.files) == 1, what="the first message")
    emulator.inject("upload", 400, after=1)  # the follow-up's second file is refused
    follow_up = message("CASE-P", "p-2", 2, {"a.txt": b"answer a", "b.txt": b"answer b"})
    await publish(channel, names, [follow_up])

    async def dead_lettered() -> bool:
        return await queue_depth(amqp, names.dlq) == 1

    await wait_for(dead_lettered, what="the follow-up in the DLQ")
    [dead] = await dead_letters(amqp, names.dlq)
    progress = orjson.loads(str((dead.headers or {})["x-scx-progress"]))
    assert progress == {
        "message": "p-2",
        "ticket": True,
        "uploaded": [upload_name("a.txt", "p-2")],
    }
    calls = emulator.state.ticket_calls

    outcome = await dlq.replay(make_settings(names, emulator), dlq.Filter(kind="rejected"))
    assert outcome.acted == 1
    await wait_for(lambda: len(emulator.files.files) == 3, what="the missing file")
    assert emulator.state.ticket_calls == calls, "the replay created no ticket"
    assert emulator.files.duplicates == 0, "only the missing file went"
    assert files_of(emulator, "CASE-P") == {
        upload_name("n.txt", "p-1"): b"question",
        upload_name("a.txt", "p-2"): b"answer a",
        upload_name("b.txt", "p-2"): b"answer b",
    }
    assert [m.posts for m in conversation(emulator, "CASE-P").messages] == [1, 1]
    assert await queue_depth(amqp, names.dlq) == 0


async def test_messages_of_one_conversation_in_flight_together_go_in_created_at_order(
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> None:
    """The promise in one process: one at a time, the earliest createdAt of those waiting."""
    await start_worker(amqp_prefetch=16, worker_concurrency=8)
    async with no_leftovers(amqp, names):
        # One message first, so the worker has left its narrow start (prefetch 1).
        await publish(channel, names, [message("CASE-W", "w-0", 0)])
        await wait_for(lambda: emulator.state.accepted_total == 1, what="the warm-up")
        emulator.configure(latency=0.3)
        # Published late first; "mid" and "early" arrive while "late" is being sent.
        await publish(
            channel,
            names,
            [
                message("CASE-O", "late", 9, {"n.txt": b"late"}),
                message("CASE-O", "mid", 5, {"n.txt": b"mid"}),
                message("CASE-O", "early", 3, {"n.txt": b"early"}),
                message("CASE-X", "other", 1),
            ],
        )
        await wait_for(lambda: emulator.state.accepted_total == 5, what="every message")
        await wait_for(lambda: len(emulator.files.files) == 3, what="every file")
    held = conversation(emulator, "CASE-O")
    assert [m.body["message"] for m in held.messages] == [
        "message late",
        "message early",
        "message mid",
    ], "the one in flight first, then the waiting ones by createdAt"
    arrival = [
        (b["ticketId"], b["message"]) for b in emulator.state.accepted if b["ticketId"] != "CASE-W"
    ]
    assert arrival.index(("CASE-X", "message other")) < arrival.index(("CASE-O", "message mid")), (
        "another conversation does not wait for this one"
    )


async def test_turns_hold_no_memory_once_a_conversation_is_idle_and_end_on_stop() -> None:
    stopping = asyncio.Event()
    turns = Turns(stopping)
    order: list[str] = []
    entered = asyncio.Event()

    async def send(name: str, created_at: str, hold: asyncio.Event | None = None) -> None:
        async with turns.turn((SELLER, "CASE-T"), created_at):
            order.append(name)
            entered.set()
            if hold is not None:
                await hold.wait()

    release = asyncio.Event()
    first = asyncio.create_task(send("first", "2026-11-27T10:09:00Z", release))
    await entered.wait()
    later = asyncio.create_task(send("later", "2026-11-27T10:05:00Z"))
    earlier = asyncio.create_task(send("earlier", "2026-11-27T10:01:00+00:00"))
    unparsable = asyncio.create_task(send("unparsable", "yesterday"))
    await wait_for(lambda: not (later.done() or earlier.done()), what="both waiting")
    assert len(turns) == 1
    release.set()
    await asyncio.gather(first, later, earlier, unparsable)
    assert order == ["first", "earlier", "later", "unparsable"]
    assert len(turns) == 0, "an idle conversation holds no entry"

    release.clear()
    holder = asyncio.create_task(send("holder", "2026-11-27T10:00:00Z", release))
    await wait_for(lambda: len(order) == 5, what="the holder")
    waiter = asyncio.create_task(send("waiter", "2026-11-27T10:01:00Z"))
    stopping.set()  # queued or not yet, it must not get the turn now
    with pytest.raises(ShuttingDown):
        await waiter
    release.set()
    await holder
    assert order[-1] == "holder", "the waiter sent nothing"
    assert len(turns) == 0


def test_names_are_stable_per_message_and_unique_per_conversation() -> None:
    requests = [
        NameRequest("note.txt", "text/plain", uploaded=True),
        NameRequest("Note.TXT", "text/plain", uploaded=True),
        NameRequest("only named.png", "image/png", uploaded=False),
    ]
    first, second = (MessageIdentity(i, "event").discriminator for i in ("m-1", "m-2"))
    names = assign_names(requests, first)
    assert names == [f"note_{first}.txt", f"Note_2_{first}.TXT", "only named.png"]
    assert assign_names(requests, first) == names, "the same message, the same names"
    others = assign_names(requests, second)
    uploaded = {n.casefold() for n in names[:2]}
    assert not uploaded & {n.casefold() for n in others[:2]}, "no name shared across messages"
    assert all(UPLOAD_NAME.fullmatch(n) for n in names[:2] + others[:2])
    body_only = message_identity(None, None, b"{}")
    assert body_only.source == "body"
    assert message_identity(None, None, b"{}") == body_only
    assert message_identity("e", "m", b"{}") == MessageIdentity("e", "event")
    assert message_identity(None, "m", b"{}") == MessageIdentity("m", "amqp")
