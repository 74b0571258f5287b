"""Conversations under a kill -9: a worker process killed between the steps of a follow-up.

Message 1 of a conversation is delivered whole; message 2's ticket call is accepted, its
upload is held back by a 503 with a long ``Retry-After``, and the worker is SIGKILLed while it
waits. A successor must complete message 2 (its file arrives) without repeating message 1,
with and without the Redis record, and whether SCX answers the repeated ticket call of
message 2 with 201 or with 409.
"""

from __future__ import annotations

import signal

import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from tests.reliability.harness import Record
from tests.support.broker import Names, publish, queue_depth
from tests.support.conversations import SELLER, conversation, files_of, message, upload_name
from tests.support.endpoints import REDIS_URL
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn, worker_env
from worker.emulator import Emulator


@pytest.mark.timeout(120)
@pytest.mark.parametrize("repeat_answer", [201, 409])
@pytest.mark.parametrize("redis", [False, True], ids=["without-redis", "with-redis"])
async def test_kill_9_between_the_ticket_call_and_the_upload_of_a_follow_up(
    redis: bool,
    repeat_answer: int,
    broker: Names,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    redis_prefix: str,
    processes: list[Process],
    record: Record,
) -> None:
    """Conversation: worker SIGKILLed between a follow-up's ticket call and its upload."""
    names = broker
    emulator.configure(conflict_on_repeated_message=repeat_answer == 409)
    extra = (
        {"WORKER_STATE_REDIS_URL": REDIS_URL, "WORKER_STATE_KEY_PREFIX": redis_prefix}
        if redis
        else {}
    )
    env = worker_env(names, emulator, SCX_RETRY_BUDGET="120", WORKER_RETRY_DELAYS="1", **extra)
    victim = await spawn("run", env=env)
    processes.append(victim)
    await wait_for(lambda: victim.has_event("worker.consuming"), what="the worker to consume")

    await publish(channel, names, [message("CASE-K", "k-1", 1, {"note.txt": b"question"})])
    await wait_for(lambda: len(emulator.files.files) == 1, what="message 1 whole")
    # Message 2's ticket goes through; its upload gets a 503 that asks for a minute's wait.
    emulator.inject("upload", 503, retry_after=60)
    await publish(channel, names, [message("CASE-K", "k-2", 2, {"note.txt": b"answer"})])
    await wait_for(
        lambda: emulator.state.route_statuses["upload 503"] == 1,
        what="message 2 created, its upload waiting",
    )
    assert emulator.state.accepted_total == 2
    victim.process.kill()
    assert await victim.wait() == -signal.SIGKILL

    successor = await spawn("run", env=env)
    processes.append(successor)
    await wait_for(lambda: len(emulator.files.files) == 2, timeout=60, what="message 2's file")

    async def settled() -> bool:
        return await queue_depth(amqp, names.queue) == 0

    await wait_for(settled, what="the work queue empty")
    held = conversation(emulator, "CASE-K")
    posts = {m.body["message"]: m.posts for m in held.messages}
    assert posts["message k-1"] == 1, "message 1 not repeated"
    assert files_of(emulator, "CASE-K") == {
        upload_name("note.txt", "k-1"): b"question",
        upload_name("note.txt", "k-2"): b"answer",
    }, "0 files lost, each under its own name with its own bytes"
    assert await queue_depth(amqp, names.dlq) == 0, "nothing dead-lettered"
    repeated_calls = posts["message k-2"] - 1 + held.messages[-1].conflicts
    record.figures.update(
        redis=redis,
        repeat_answer=repeat_answer,
        messages=len(held.messages),
        messages_lost=2 - len(held.messages),
        files_lost=2 - len(emulator.files.files),
        message_1_posts=posts["message k-1"],
        message_2_ticket_calls=1 + repeated_calls,
        duplicate_posts=emulator.state.duplicates,
        duplicate_uploads=emulator.files.duplicates,
    )
    record.bounds = {
        "messages_lost": "= 0",
        "files_lost": "= 0",
        "message_1_posts": "= 1",
        "duplicate_posts": "≤ 1 (the message in flight at the kill; 0 with Redis)",
    }
    assert emulator.state.duplicates <= (0 if redis else 1)
    if redis:
        assert repeated_calls == 0, "the record said message 2's ticket exists"
    assert held.seller_id == SELLER
    successor.process.send_signal(signal.SIGTERM)
    assert await successor.wait() == 0
