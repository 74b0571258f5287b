"""``scx-forwarder dlq ...`` as a process against real dead-letter queues.

DLQs are filled the real way where it matters (the worker dead-letters invalid and
rejected tickets, the broker dead-letters over the delivery limit) and with copies made
like the worker's for volume.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from tests.support.broker import Names, publish
from tests.support.events import event
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.processes import cli, start_cli
from tests.support.settings import settings_for
from worker.amqp.topology import declare_topology
from worker.core.settings import Settings
from worker.emulator import Emulator
from worker.ops import dlq

ERROR_HEADERS = {
    "x-error-kind",
    "x-error-reason",
    "x-error-detail",
    "x-attempts",
    "x-original-exchange",
    "x-original-routing-key",
    "x-original-queue",
    "x-dead-lettered-at",
}


@pytest.fixture
async def topology(
    amqp: AbstractRobustConnection, names: Names, channel: AbstractChannel
) -> Settings:
    """The worker's exchange and queues, declared as the worker does; all deleted after."""
    settings = settings_for(names)
    declaring = await amqp.channel()
    await declare_topology(declaring, settings)
    await declaring.close()
    return settings  # the channel fixture deletes them


def dead_letter(
    message_id: str,
    body: bytes,
    kind: str,
    *,
    at: datetime | None = None,
    extra: dict[str, Any] | None = None,
) -> aio_pika.Message:
    """A copy as ``worker.forward.consumer`` makes it."""
    return aio_pika.Message(
        body,
        message_id=message_id,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        timestamp=datetime.now(UTC),
        headers={
            "x-error-kind": kind,
            "x-error-reason": f"{kind}: something about {message_id}",
            "x-error-detail": "{}",
            "x-attempts": 1,
            "x-original-exchange": "marketplace",
            "x-original-routing-key": "ticket.created",
            "x-original-queue": "scx.tickets",
            "x-dead-lettered-at": (at or datetime.now(UTC)).isoformat(timespec="milliseconds"),
            **(extra or {}),
        },
    )


async def seed(channel: AbstractChannel, queue: str, messages: list[aio_pika.Message]) -> None:
    """Publish straight into ``queue`` with confirms, in windows."""
    for start in range(0, len(messages), 500):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(m, routing_key=queue, mandatory=True)
                for m in messages[start : start + 500]
            )
        )


async def peek(amqp: AbstractRobustConnection, queue: str) -> list[AbstractIncomingMessage]:
    """Every ready message of ``queue``, in order; all of them go back."""
    looking = await amqp.channel()
    try:
        declared = await looking.declare_queue(queue, passive=True)
        found = []
        while (message := await declared.get(no_ack=False, fail=False)) is not None:
            found.append(message)
        return found
    finally:
        await looking.close()


def ids(messages: list[AbstractIncomingMessage]) -> list[str]:
    return [str(m.message_id) for m in messages]


async def get_one(queue: AbstractQueue) -> AbstractIncomingMessage:
    got: list[AbstractIncomingMessage] = []

    async def take() -> bool:
        if (message := await queue.get(no_ack=False, fail=False)) is not None:
            got.append(message)
        return bool(got)

    await wait_for(take, what=f"a message in {queue.name}")
    return got[0]


async def broker_dead_letter(
    amqp: AbstractRobustConnection, settings: Settings, names: Names, message_id: str
) -> None:
    """Have the broker itself dead-letter a message: returned past the delivery limit."""
    ch = await amqp.channel()
    await publish(ch, names, [b'{"poison": true}'], message_id=message_id)
    queue = await ch.declare_queue(names.queue, passive=True)
    for _ in range(settings.amqp_delivery_limit + 1):
        await (await get_one(queue)).nack(requeue=True)
    await ch.close()


@pytest.fixture
async def mixed_dlq(
    topology: Settings,
    start_worker: StartWorker,
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
) -> list[str]:
    """A DLQ filled by the worker and the broker: 2 malformed, 1 invalid, 2 rejected,
    1 delivery-limit. Returns the message ids in queue order."""
    await broker_dead_letter(amqp, topology, names, "poison-1")
    running = await start_worker()
    emulator.inject("ticket", 400, count=2)
    await publish(channel, names, [event(1)], message_id="rejected-1")
    await publish(channel, names, [event(2)], message_id="rejected-2")
    await publish(channel, names, [b"not json"], message_id="malformed-1")
    await publish(channel, names, [b"\xff\xfe"], message_id="malformed-2")
    await publish(channel, names, [event(3, author={"role": "robot"})], message_id="invalid-1")

    async def all_there() -> bool:
        return len(await peek(amqp, names.dlq)) == 6

    await wait_for(all_there, what="six dead letters")
    await running.stop()
    return ids(await peek(amqp, names.dlq))


async def test_stats_counts_by_kind_including_the_brokers_own_dead_letters(
    mixed_dlq: list[str], amqp: AbstractRobustConnection, names: Names
) -> None:
    result = await cli(names, "dlq", "stats", "--json")
    assert result.code == 0, result.err
    [stats] = result.json_lines()
    assert stats["total"] == 6
    counts = {kind: s["count"] for kind, s in stats["kinds"].items()}
    assert counts == {"malformed": 2, "invalid": 1, "rejected": 2, "delivery-limit": 1}
    for s in stats["kinds"].values():
        assert s["oldest"] <= s["newest"]

    table = await cli(names, "dlq", "stats")
    assert table.code == 0
    assert f"{names.dlq}: 6 messages" in table.out
    assert "delivery-limit" in table.out
    assert ids(await peek(amqp, names.dlq)) == mixed_dlq, "nothing moved, same order"


async def test_list_shows_a_table_or_json_lines_filtered_and_limited(
    mixed_dlq: list[str], amqp: AbstractRobustConnection, names: Names
) -> None:
    table = await cli(names, "dlq", "list")
    assert table.code == 0, table.err
    header, *rows = table.out.splitlines()
    assert header.split()[:5] == ["message", "id", "ticket", "id", "kind"]
    assert len(rows) == 6
    rejected_row = next(row for row in rows if row.startswith("rejected-1"))
    assert "T-000001" in rejected_row
    assert "API rejected the ticket with HTTP 400" in rejected_row

    lines = (await cli(names, "dlq", "list", "--json")).json_lines()
    assert [line["message_id"] for line in lines] == mixed_dlq
    by_id = {line["message_id"]: line for line in lines}
    assert by_id["invalid-1"]["kind"] == "invalid"
    assert by_id["invalid-1"]["ticket_id"] == "T-000003"
    assert "author.role" in by_id["invalid-1"]["reason"]
    assert by_id["malformed-2"]["ticket_id"] is None
    assert by_id["poison-1"]["kind"] == "delivery-limit"
    assert by_id["poison-1"]["age_s"] >= 0

    only = (await cli(names, "dlq", "list", "--json", "--kind", "malformed")).json_lines()
    assert [line["message_id"] for line in only] == ["malformed-1", "malformed-2"]
    one = (
        await cli(names, "dlq", "list", "--json", "--kind", "malformed", "--limit", "1")
    ).json_lines()
    assert [line["message_id"] for line in one] == ["malformed-1"]
    ticket = await cli(names, "dlq", "list", "--json", "--ticket-id", "T-000002")
    assert [line["message_id"] for line in ticket.json_lines()] == ["rejected-2"]
    assert ids(await peek(amqp, names.dlq)) == mixed_dlq, "nothing moved, same order"


async def test_replay_moves_matches_to_the_work_queue_and_the_worker_forwards_them(
    mixed_dlq: list[str],
    amqp: AbstractRobustConnection,
    names: Names,
    emulator: Emulator,
    start_worker: StartWorker,
) -> None:
    dry = await cli(names, "dlq", "replay", "--kind", "rejected", "--dry-run")
    assert dry.code == 0, dry.err
    assert "would replay 2 of" in dry.out
    assert ids(await peek(amqp, names.dlq)) == mixed_dlq

    replayed = await cli(names, "dlq", "replay", "--kind", "rejected")
    assert replayed.code == 0, replayed.err
    assert "replayed 2 of" in replayed.out
    assert ids(await peek(amqp, names.dlq)) == [i for i in mixed_dlq if not i.startswith("rej")]

    back = await peek(amqp, names.queue)
    assert ids(back) == ["rejected-1", "rejected-2"]
    for message in back:
        headers = message.headers or {}
        assert not ERROR_HEADERS & set(headers)
        assert "x-death" not in headers
        assert headers["x-replay-count"] == 1
        assert message.content_type is None or message.content_type == "application/json"

    calls_before = emulator.state.ticket_calls
    await start_worker()
    await wait_for(lambda: len(emulator.state.accepted) == 2, what="the replayed two forwarded")
    assert sorted(emulator.state.accepted_counts) == ["T-000001", "T-000002"]
    assert emulator.state.ticket_calls == calls_before + 2


async def test_replay_filters_by_ticket_id_counts_replays_and_keeps_the_order(
    topology: Settings, channel: AbstractChannel, amqp: AbstractRobustConnection, names: Names
) -> None:
    messages = [
        dead_letter(f"m-{i}", event(i), "exhausted" if i % 2 else "invalid") for i in range(10)
    ]
    messages.append(dead_letter("again", event(42), "exhausted", extra={"x-replay-count": 2}))
    await seed(channel, names.dlq, messages)

    by_ticket = await cli(names, "dlq", "replay", "--ticket-id", "T-000003")
    assert by_ticket.code == 0, by_ticket.err
    assert ids(await peek(amqp, names.queue)) == ["m-3"]

    limited = await cli(names, "dlq", "replay", "--kind", "exhausted", "--limit", "2")
    assert limited.code == 0, limited.err
    assert ids(await peek(amqp, names.queue)) == ["m-3", "m-1", "m-5"]

    rest = await cli(names, "dlq", "replay", "--kind", "exhausted")
    assert rest.code == 0, rest.err
    back = await peek(amqp, names.queue)
    assert ids(back) == ["m-3", "m-1", "m-5", "m-7", "m-9", "again"]
    assert (back[-1].headers or {})["x-replay-count"] == 3
    assert ids(await peek(amqp, names.dlq)) == [f"m-{i}" for i in range(0, 10, 2)]


async def test_kept_messages_go_back_at_the_end_of_a_scan_not_with_the_connection(
    topology: Settings, channel: AbstractChannel, amqp: AbstractRobustConnection, names: Names
) -> None:
    await seed(channel, names.dlq, [dead_letter(f"m-{i}", b"{}", "invalid") for i in range(4)])
    async with dlq.scanning(topology) as scan:
        async for message, _ in scan.messages():
            if message.message_id in ("m-1", "m-3"):  # acting on the last one, too
                await scan.done_with(message)
        await scan.give_back()
        assert ids(await peek(amqp, names.dlq)) == ["m-0", "m-2"], "back while still connected"


async def test_purge_needs_yes_and_deletes_only_what_matches(
    mixed_dlq: list[str], amqp: AbstractRobustConnection, names: Names
) -> None:
    refused = await cli(names, "dlq", "purge", "--kind", "malformed")
    assert refused.code == 2
    assert "--yes" in refused.err
    assert ids(await peek(amqp, names.dlq)) == mixed_dlq

    purged = await cli(names, "dlq", "purge", "--kind", "malformed", "--yes")
    assert purged.code == 0, purged.err
    assert "deleted 2 of 6" in purged.out
    assert ids(await peek(amqp, names.dlq)) == [i for i in mixed_dlq if not i.startswith("mal")]


async def test_export_copies_every_message_and_removes_none(
    topology: Settings,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    tmp_path: Path,
) -> None:
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    messages = [
        dead_letter("text", event(1), "rejected", at=an_hour_ago),
        dead_letter("binary", b"\x00\xff\x10", "malformed", extra={"X-Auth-Token": "s3cr3t-hdr"}),
    ]
    await seed(channel, names.dlq, messages)
    target = tmp_path / "dlq.jsonl"

    result = await cli(names, "dlq", "export", str(target))
    assert result.code == 0, result.err
    assert "exported 2 of 2" in result.err
    text, binary = [orjson.loads(line) for line in target.read_bytes().splitlines()]
    assert text["body_encoding"] == "utf-8"
    assert orjson.loads(text["body"]) == orjson.loads(event(1))
    assert text["kind"] == "rejected"
    assert text["ticket_id"] == "T-000001"
    assert text["properties"]["message_id"] == "text"
    assert text["properties"]["content_type"] == "application/json"
    assert text["headers"]["x-original-queue"] == "scx.tickets"
    assert text["dead_lettered_at"].startswith(an_hour_ago.isoformat()[:16])
    assert binary["body_encoding"] == "base64"
    assert binary["body"] == "AP8Q"
    assert binary["headers"]["X-Auth-Token"] == "***"
    assert "s3cr3t-hdr" not in target.read_text()
    assert ids(await peek(amqp, names.dlq)) == ["text", "binary"], "the DLQ keeps them all"

    stdout = await cli(names, "dlq", "export", "-", "--kind", "rejected")
    assert [line["properties"]["message_id"] for line in stdout.json_lines()] == ["text"]


async def test_a_replay_killed_halfway_loses_nothing(
    topology: Settings, channel: AbstractChannel, amqp: AbstractRobustConnection, names: Names
) -> None:
    total = 1500
    expected = [f"m-{i:05d}" for i in range(total)]
    await seed(channel, names.dlq, [dead_letter(i, b"{}", "exhausted") for i in expected])

    replay = await start_cli(names, "dlq", "replay")

    async def ready(queue: str) -> int:
        # Counted without taking (every take-and-return counts towards the work queue's
        # delivery limit), on a new channel (a robust one caches passive declares).
        counting = await amqp.channel()
        try:
            declared = await counting.declare_queue(queue, passive=True)
            return declared.declaration_result.message_count or 0
        finally:
            await counting.close()

    async def halfway() -> bool:
        return replay.returncode is not None or await ready(names.queue) >= total // 10

    await wait_for(halfway, what="a tenth replayed")
    if replay.returncode is not None:
        _, err = await replay.communicate()
        pytest.fail(f"the replay ended before it could be interrupted: {err.decode()}")
    replay.send_signal(signal.SIGKILL)
    await replay.wait()

    async def everything_back() -> bool:
        return await ready(names.dlq) + await ready(names.queue) >= total

    await wait_for(everything_back, what="the unacked messages back in the DLQ")
    in_dlq, in_work = ids(await peek(amqp, names.dlq)), ids(await peek(amqp, names.queue))
    assert 0 < len(in_work) < total
    assert sorted(set(in_dlq) | set(in_work)) == expected, "no message lost"
    assert len(in_dlq) + len(in_work) <= total + 1, "at most the one in flight twice"
    assert in_dlq == sorted(in_dlq), "the rest kept its order"

    finish = await cli(names, "dlq", "replay")
    assert finish.code == 0, finish.err
    assert await peek(amqp, names.dlq) == []
    replayed = Counter(ids(await peek(amqp, names.queue)))
    assert sorted(replayed) == expected
    assert sum(replayed.values()) <= total + 1


async def test_commands_fail_with_exit_1_and_a_reason_when_queues_or_broker_are_missing(
    names: Names, channel: AbstractChannel, amqp: AbstractRobustConnection
) -> None:
    missing = await cli(names, "dlq", "stats")
    assert missing.code == 1
    assert f"{names.dlq!r} does not exist" in missing.err

    await channel.declare_queue(names.dlq, durable=True, arguments={"x-queue-type": "quorum"})
    await seed(channel, names.dlq, [dead_letter("x", b"{}", "exhausted")])
    no_work_queue = await cli(names, "dlq", "replay")
    assert no_work_queue.code == 1
    assert "work queue" in no_work_queue.err
    assert ids(await peek(amqp, names.dlq)) == ["x"]

    unreachable = await cli(names, "dlq", "list", AMQP_URL="amqp://u:hunter2@127.0.0.1:1/")
    assert unreachable.code == 1
    assert "broker unreachable" in unreachable.err
    cannot_write = await cli(names, "dlq", "export", "/nonexistent/dir/out.jsonl")
    assert cannot_write.code == 1
    assert "cannot write" in cannot_write.err
    assert "hunter2" not in unreachable.err + unreachable.out
