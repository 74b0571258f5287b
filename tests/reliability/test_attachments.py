"""Tickets with attachment files through crashes, with the progress record in Redis."""

from __future__ import annotations

import base64
import signal
import time
from collections import Counter

import orjson
import pytest

from tests.reliability.harness import (
    FAST_RETRIES,
    Backlog,
    DeadLetters,
    MakeFleet,
    Record,
    finish,
    make_backlog,
    publish_backlog,
    wait_until,
)
from tests.support.broker import Names
from tests.support.endpoints import REDIS_URL
from worker.emulator import Emulator

BACKLOG = 200
FILES = 3


def with_files(backlog: Backlog) -> Backlog:
    """The same backlog, each valid event carrying ``FILES`` small inline files."""
    bodies = []
    for body in backlog.bodies:
        if body in backlog.invalid:
            bodies.append(body)
            continue
        event = orjson.loads(body)
        ticket_id = event["data"]["ticket_id"]
        event["data"]["attachments"] = [
            {
                "filename": f"scan {n}.txt",
                "content_type": "text/plain",
                "content_base64": base64.b64encode(f"{ticket_id}/{n}\n".encode() * 64).decode(),
            }
            for n in range(FILES)
        ]
        bodies.append(orjson.dumps(event))
    return Backlog(bodies, backlog.valid, backlog.invalid)


@pytest.mark.timeout(300)
async def test_worker_sigkilled_twice_during_uploads_with_the_progress_record(
    broker: Names,
    emulator: Emulator,
    dead: DeadLetters,
    make_fleet: MakeFleet,
    record: Record,
    redis_prefix: str,
) -> None:
    """Worker SIGKILLed twice while uploading attachments, with the Redis progress record."""
    in_flight = 4  # WORKER_ATTACHMENT_CONCURRENCY: messages with a step in flight
    emulator.configure(latency=0.02)
    fleet = make_fleet(
        WORKER_STATE_REDIS_URL=REDIS_URL,
        WORKER_STATE_KEY_PREFIX=redis_prefix,
        WORKER_ATTACHMENT_CONCURRENCY=str(in_flight),
        **FAST_RETRIES,
    )
    backlog = with_files(make_backlog(BACKLOG, seed=21))
    await publish_backlog(fleet.env, backlog)
    started = time.monotonic()
    files = emulator.files
    kills = 0
    for share in (3, 3 / 2):
        worker = await fleet.start()
        target = len(backlog.valid) * FILES / share

        def reached(target: float = target) -> bool:
            return len(files.files) >= target

        await wait_until(reached, timeout=120, fleet=fleet, what=f"{target:.0f} files")
        worker.process.kill()
        assert await worker.wait() == -signal.SIGKILL
        kills += 1
    await fleet.start()
    books = await finish(
        record.figures, backlog, emulator, dead, broker, started=started, timeout=180, fleet=fleet
    )
    await wait_until(
        lambda: len(files.files) == len(backlog.valid) * FILES, timeout=60, fleet=fleet, what="all"
    )
    per_ticket = Counter(ticket for (_, ticket, _) in files.files)
    assert set(per_ticket) == backlog.valid
    assert set(per_ticket.values()) == {FILES}
    bound = kills * in_flight
    record.figures.update(
        kills=kills,
        files_stored=len(files.files),
        upload_calls=emulator.state.channel_calls["upload"],
        duplicate_uploads=files.duplicates,
        duplicate_steps=books.duplicated + files.duplicates,
    )
    record.bounds = {
        "lost": "= 0",
        "duplicated": f"≤ {bound} (a step in flight per message, {in_flight} messages, per kill)",
        "duplicate_uploads": f"≤ {bound}",
        "duplicate_steps": f"≤ {bound} (tickets and uploads together)",
    }
    books.check(max_duplicates=bound, fleet=fleet)
    assert books.duplicated + files.duplicates <= bound
