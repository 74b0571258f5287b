"""``scx-forwarder`` as operators run it: a real process, real signals, its stdout and exit code."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import httpx
import orjson
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from tests.support.broker import Names, collect, publish, queue_depth
from tests.support.endpoints import REFRESH_TOKEN
from tests.support.events import event
from tests.support.forwarder import StartWorker
from tests.support.polling import wait_for
from tests.support.processes import Process, spawn, worker_env
from worker.emulator import Emulator


async def test_sigterm_finishes_in_flight_messages_and_loses_none(
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    processes: list[Process],
    start_worker: StartWorker,
) -> None:
    emulator.configure(latency=0.4)
    worker = await spawn(
        "run", env=worker_env(names, emulator, WORKER_CONCURRENCY="4", AMQP_PREFETCH="8")
    )
    processes.append(worker)
    await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
    await publish(channel, names, [event(i) for i in range(30)])
    await wait_for(lambda: emulator.state.ticket_calls >= 4, what="four calls in flight")

    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0
    # Every call that was in flight was finished and acked; nothing else was sent.
    in_flight_done = len(emulator.state.accepted)
    assert in_flight_done == emulator.state.ticket_calls >= 4
    assert worker.has_event("worker.stopped")
    assert await queue_depth(amqp, names.queue) == 30 - in_flight_done

    # A successor picks up exactly the rest: nothing lost, nothing sent twice.
    emulator.configure(latency=0.0)
    await start_worker()
    await wait_for(lambda: len(emulator.state.accepted) == 30, what="the rest forwarded")
    assert set(emulator.state.accepted_counts.values()) == {1}


async def test_logs_are_json_lines_without_any_secret(
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    processes: list[Process],
    broker_user: tuple[str, str],
) -> None:
    emulator.configure(token_lifetime=0.5)
    user, password = broker_user
    amqp_url = f"amqp://{user}:{password}@127.0.0.1:5672/"
    worker = await spawn(
        "run", env=worker_env(names, emulator, LOG_LEVEL="debug", AMQP_URL=amqp_url)
    )
    processes.append(worker)
    await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
    await publish(channel, names, [event(i) for i in range(5)])
    await wait_for(lambda: len(emulator.state.accepted) == 5, what="the first five")
    emulator.revoke_tokens()  # forces the 401 -> refresh -> resend path
    await publish(channel, names, [event(i) for i in range(5, 10)] + [b"not json"])
    await wait_for(lambda: len(emulator.state.accepted) == 10, what="all ten")
    await collect(channel, names.dlq, 1)
    worker.process.send_signal(signal.SIGINT)
    assert await worker.wait() == 0

    events = worker.events()  # every line parses as JSON
    names_seen = {e["event"] for e in events}
    assert {"worker.consuming", "ticket.forwarded", "ticket.dead_lettered"} <= names_seen
    forwarded = [e for e in events if e["event"] == "ticket.forwarded"]
    assert len(forwarded) == 10
    assert {"message_id", "ticket_id", "seller_id", "attempt", "status", "duration_ms"} <= set(
        forwarded[0]
    )
    assert all(e["level"] and e["timestamp"] for e in events)
    assert len(emulator.issued_tokens) >= 2
    for secret in [REFRESH_TOKEN, password, *emulator.issued_tokens]:
        assert secret not in worker.output
    assert "Bearer" not in worker.output


async def test_rejected_refresh_token_stops_the_worker_with_exit_3_and_keeps_the_message(
    emulator: Emulator,
    channel: AbstractChannel,
    amqp: AbstractRobustConnection,
    names: Names,
    processes: list[Process],
) -> None:
    bad_token = "wrong-refresh-token-xyz"
    worker = await spawn("run", env=worker_env(names, emulator, SCX_REFRESH_TOKEN=bad_token))
    processes.append(worker)
    await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
    await publish(channel, names, [event(1), event(2)])
    assert await worker.wait() == 3
    fatal = [e for e in worker.events() if e["event"] == "worker.fatal"]
    assert fatal, "a clear fatal line names the problem"
    assert "refresh token" in fatal[0]["error"]
    assert bad_token not in worker.output
    assert emulator.state.auth_calls == 1, "a refused refresh token is not retried"
    assert await queue_depth(amqp, names.queue) == 2, "no message is lost or dead-lettered"
    assert await queue_depth(amqp, names.dlq) == 0


async def test_refresh_token_file_is_read(
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    processes: list[Process],
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "refresh-token"
    token_file.write_text(REFRESH_TOKEN + "\n")
    env = worker_env(names, emulator, SCX_REFRESH_TOKEN_FILE=str(token_file))
    del env["SCX_REFRESH_TOKEN"]
    worker = await spawn("run", env=env)
    processes.append(worker)
    await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker to consume")
    await publish(channel, names, [event(1)])
    await wait_for(lambda: len(emulator.state.accepted) == 1, what="the ticket")
    worker.process.send_signal(signal.SIGTERM)
    assert await worker.wait() == 0


async def test_bad_configuration_exits_2_naming_every_bad_variable(
    emulator: Emulator, names: Names
) -> None:
    env = worker_env(
        names,
        emulator,
        AMQP_PREFETCH="lots",
        SCX_MAX_REQUESTS_PER_MINUTE="-1",
        AMQP_QUEUE_TYPE="stream",
        SCX_API_URL="not a url",
        WORKER_CONCURRENCY="0",
    )
    worker = await spawn("run", env=env)
    assert await worker.wait() == 2
    for variable in (
        "AMQP_PREFETCH",
        "SCX_MAX_REQUESTS_PER_MINUTE",
        "AMQP_QUEUE_TYPE",
        "SCX_API_URL",
        "WORKER_CONCURRENCY",
    ):
        assert variable in worker.output
    assert "lots" not in worker.output, "values are not echoed: they may be secrets"


async def test_missing_refresh_token_exits_2(emulator: Emulator, names: Names) -> None:
    env = worker_env(names, emulator)
    del env["SCX_REFRESH_TOKEN"]
    worker = await spawn("run", env=env)
    assert await worker.wait() == 2
    assert "SCX_REFRESH_TOKEN or SCX_REFRESH_TOKEN_FILE is required" in worker.output


async def test_unreachable_broker_exits_1_with_a_redacted_url(
    emulator: Emulator, names: Names
) -> None:
    env = worker_env(names, emulator, AMQP_URL="amqp://user:hunter2@127.0.0.1:1/")
    worker = await spawn("run", env=env)
    assert await worker.wait() == 1
    [line] = [e for e in worker.events() if e["event"] == "worker.broker_unreachable"]
    assert line["broker"] == "amqp://user:***@127.0.0.1:1/"
    assert "hunter2" not in worker.output


async def test_unknown_mapper_exits_2(emulator: Emulator, names: Names) -> None:
    worker = await spawn("run", "--mapper", "no_such_module:f", env=worker_env(names, emulator))
    assert await worker.wait() == 2
    assert "no_such_module" in worker.output


async def test_sample_and_publish_feed_the_worker(
    emulator: Emulator,
    channel: AbstractChannel,
    names: Names,
    start_worker: StartWorker,
    tmp_path: Path,
) -> None:
    await start_worker()
    sample = await spawn("sample", "--count", "6", "--invalid", "3", env=dict(os.environ))
    assert await sample.wait() == 0
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"".join(sample.lines))
    assert len(sample.lines) == 9

    published = await spawn("publish", str(jsonl), env=worker_env(names, emulator))
    assert await published.wait() == 0
    assert "published 9 messages" in published.output
    await wait_for(lambda: len(emulator.state.accepted) == 6, what="six forwarded")
    dead = await collect(channel, names.dlq, 3)
    assert {m.headers["x-error-kind"] for m in dead} == {"malformed"}


async def test_events_published_before_the_worker_ever_ran_wait_for_it(
    emulator: Emulator, names: Names, start_worker: StartWorker, tmp_path: Path
) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(event(1) + b"\n" + event(2) + b"\n")
    published = await spawn("publish", str(jsonl), env=worker_env(names, emulator))
    assert await published.wait() == 0
    await start_worker()
    await wait_for(lambda: len(emulator.state.accepted) == 2, what="both forwarded")


async def test_publish_to_a_routing_key_no_queue_is_bound_to_fails_loudly(
    emulator: Emulator, names: Names, channel: AbstractChannel, tmp_path: Path
) -> None:
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(event(1) + b"\n")
    published = await spawn(
        "publish", str(jsonl), "--routing-key", "ticket.updated", env=worker_env(names, emulator)
    )
    assert await published.wait() == 1
    assert "no queue is bound" in published.output


async def test_emulator_command_serves_the_api_until_sigterm(unused_tcp_port: int) -> None:
    emulator = await spawn(
        "emulator", "--port", str(unused_tcp_port), "--refresh-token", "r",
        "--rate-limit", "5", "--rate-interval", "30", "--rate-algorithm", "sliding",
        env=dict(os.environ),
    )  # fmt: skip
    await wait_for(lambda: emulator.has_event("emulator.listening"), what="the emulator")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{unused_tcp_port}") as client:
        auth = await client.post("/v1/auth", data={"refreshToken": "r"})
        assert auth.status_code == 200
        assert auth.json()["scope"] == "CHANNEL"
        config = (await client.post("/_emulator/config", json={})).json()
        assert (config["rate_limit"], config["rate_interval"]) == (5, 30)
        assert config["rate_algorithm"] == "sliding"
    emulator.process.send_signal(signal.SIGTERM)
    assert await emulator.wait() == 0


async def crash_loop(
    env: dict[str, str],
    channel: AbstractChannel,
    names: Names,
    emulator: Emulator,
    bodies: list[bytes],
    *,
    valid: int,
    max_crashes: int,
) -> int:
    """Like a supervisor: restart the worker whenever it dies until ``valid`` tickets are in.

    ``bodies`` are published once the first worker consumes; returns how often it crashed.
    """

    async def one_life(first: bool) -> int | None:
        """One worker's life: its exit code if it died, None once the valid ones are in."""
        worker = await spawn("run", env=env)
        exited = asyncio.create_task(worker.wait(timeout=30))
        if first:
            await wait_for(lambda: worker.has_event("worker.consuming"), what="the worker")
            await publish(channel, names, bodies)
        await wait_for(
            lambda: exited.done() or len(emulator.state.accepted) == valid,
            what="a crash or the end",
        )
        if exited.done():
            return exited.result()
        worker.process.send_signal(signal.SIGTERM)
        assert await exited == 0
        return None

    crashes = 0
    while (code := await one_life(first=crashes == 0)) is not None:
        assert code == 70
        crashes += 1
        assert crashes <= max_crashes, "the poison message must not crash-loop the worker forever"
    return crashes


async def test_a_message_that_kills_the_worker_ends_in_the_dlq_by_the_delivery_limit(
    emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    env = worker_env(
        names,
        emulator,
        WORKER_MAPPER="tests.support.mappers:crash_on_poison",
        AMQP_DELIVERY_LIMIT="2",
        AMQP_PREFETCH="1",
        WORKER_CONCURRENCY="1",
        PYTHONPATH=str(Path(__file__).parent.parent),
    )
    bodies = [orjson.dumps({"poison": True})] + [orjson.dumps({"case": f"C-{i}"}) for i in range(3)]
    crashes = await crash_loop(env, channel, names, emulator, bodies, valid=3, max_crashes=5)
    assert crashes == 3, "delivered three times: the third return is over a limit of 2"
    assert sorted(emulator.state.accepted_counts) == ["C-0", "C-1", "C-2"]
    [dead] = await collect(channel, names.dlq, 1)
    assert dead.body == bodies[0]
    assert dead.headers["x-first-death-reason"] == "delivery_limit"


async def test_a_poison_message_does_not_drag_the_messages_around_it_into_the_dlq(
    emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    """Default prefetch and concurrency: the crash returns every message the worker held."""
    env = worker_env(
        names,
        emulator,
        WORKER_MAPPER="tests.support.mappers:crash_on_poison",
        AMQP_DELIVERY_LIMIT="2",
        PYTHONPATH=str(Path(__file__).parent.parent),
    )
    valid = [orjson.dumps({"case": f"C-{i}"}) for i in range(40)]
    bodies = [orjson.dumps({"poison": True}), *valid]
    crashes = await crash_loop(env, channel, names, emulator, bodies, valid=40, max_crashes=4)
    assert crashes == 3
    assert sorted(emulator.state.accepted_counts) == sorted(f"C-{i}" for i in range(40))
    [dead] = await collect(channel, names.dlq, 1)
    assert orjson.loads(dead.body) == {"poison": True}


async def test_a_queue_declared_elsewhere_with_other_arguments_exits_1_with_a_hint(
    emulator: Emulator, channel: AbstractChannel, names: Names
) -> None:
    await channel.declare_queue(names.queue, durable=True)  # classic, no dead-lettering
    worker = await spawn("run", env=worker_env(names, emulator))
    assert await worker.wait() == 1
    [line] = [e for e in worker.events() if e["event"] == "worker.topology_mismatch"]
    assert line["queue"] == names.queue
    assert "AMQP_QUEUE_TYPE" in line["hint"]
