"""``scx-forwarder check`` as a deploy pipeline runs it: a process, its report, its exit code."""

from __future__ import annotations

import aiormq
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from tests.support.broker import Names
from tests.support.endpoints import AMQP_URL, REDIS_URL, REFRESH_TOKEN
from tests.support.processes import Result, cli
from tests.support.settings import settings_for
from worker.amqp.topology import declare_topology
from worker.emulator import Emulator


def api_env(emulator: Emulator, **extra: str) -> dict[str, str]:
    return {"SCX_API_URL": emulator.base_url, "SCX_REFRESH_TOKEN": REFRESH_TOKEN, **extra}


async def check(names: Names, emulator: Emulator, **env: str) -> Result:
    return await cli(names, "check", **api_env(emulator, **env))


def lines(result: Result) -> dict[str, str]:
    """Report lines by check name: ``{"broker": "ok", ...}`` (the first word of each)."""
    found: dict[str, str] = {}
    for line in result.out.splitlines()[:-1]:
        status, name, *_ = line.split()
        found.setdefault(name, status)
    return found


@pytest.fixture
async def declared(amqp: AbstractRobustConnection, names: Names, channel: AbstractChannel) -> None:
    """The topology as ``run`` declares it with the settings ``check`` reads (the defaults)."""
    declaring = await amqp.channel()
    await declare_topology(declaring, settings_for(names))
    await declaring.close()


async def test_a_working_setup_passes_and_prints_no_secret(
    declared: None, names: Names, emulator: Emulator, broker_user: tuple[str, str]
) -> None:
    user, password = broker_user
    result = await check(names, emulator, AMQP_URL=f"amqp://{user}:{password}@127.0.0.1:5672/")
    assert result.code == 0, result.out + result.err
    report = lines(result)
    assert {"config", "broker", "exchange", "queue", "dlq", "token"} <= set(report)
    assert set(report.values()) == {"ok"}, result.out
    assert result.out.splitlines()[-1] == "check passed"
    assert f"{names.queue!r}: 0 ready, 0 consumers" in result.out
    assert "expires in 3600 s" in result.out
    assert emulator.state.auth_calls == 1
    output = result.out + result.err
    assert password not in output
    assert REFRESH_TOKEN not in output
    for token in emulator.issued_tokens:
        assert token not in output


async def test_missing_queues_are_reported_not_created(
    names: Names, emulator: Emulator, amqp: AbstractRobustConnection
) -> None:
    result = await check(names, emulator)
    assert result.code == 0, result.out + result.err
    report = lines(result)
    assert report["exchange"] == report["queue"] == report["dlq"] == "warn"
    assert f"{names.dlq!r} does not exist yet" in result.out
    assert "warning" in result.out.splitlines()[-1]
    probe = await amqp.channel()
    with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
        await probe.declare_queue(names.queue, passive=True)


async def test_a_refused_refresh_token_fails_with_exit_1(
    declared: None, names: Names, emulator: Emulator
) -> None:
    result = await check(names, emulator, SCX_REFRESH_TOKEN="not-the-right-one-xyz")
    assert result.code == 1
    assert lines(result)["token"] == "fail"
    assert "refused the refresh token (HTTP 401)" in result.out
    assert "not-the-right-one-xyz" not in result.out + result.err
    assert result.out.splitlines()[-1].startswith("check failed: 1 of")


async def test_an_unreachable_broker_or_api_fails_with_exit_1(
    names: Names, emulator: Emulator, unused_tcp_port: int
) -> None:
    result = await check(
        names,
        emulator,
        AMQP_URL="amqp://someone:hunter2@127.0.0.1:1/",
        SCX_API_URL=f"http://127.0.0.1:{unused_tcp_port}",
    )
    assert result.code == 1
    assert lines(result) == {"config": "ok", "broker": "fail", "token": "fail"}
    assert "amqp://someone:***@127.0.0.1:1/" in result.out
    assert "hunter2" not in result.out + result.err
    assert "cannot reach" in result.out


async def test_the_progress_records_redis_is_checked_when_configured(
    declared: None, names: Names, emulator: Emulator, unused_tcp_port: int
) -> None:
    without = await check(names, emulator)
    assert "state" not in lines(without)

    reachable = await check(names, emulator, WORKER_STATE_REDIS_URL=REDIS_URL)
    assert reachable.code == 0, reachable.out + reachable.err
    assert lines(reachable)["state"] == "ok"
    assert "answers PING" in reachable.out

    unreachable = f"redis://someone:hunter2@127.0.0.1:{unused_tcp_port}/0"
    result = await check(names, emulator, WORKER_STATE_REDIS_URL=unreachable)
    assert result.code == 1
    assert lines(result)["state"] == "fail"
    assert f"redis://someone:***@127.0.0.1:{unused_tcp_port}/0" in result.out
    assert "hunter2" not in result.out + result.err


async def test_bad_configuration_exits_2_before_contacting_anything(
    names: Names, emulator: Emulator
) -> None:
    result = await check(names, emulator, AMQP_PREFETCH="lots")
    assert result.code == 2
    assert "AMQP_PREFETCH" in result.err
    assert emulator.state.auth_calls == 0

    missing = await cli(names, "check", SCX_API_URL=emulator.base_url, AMQP_URL=AMQP_URL)
    assert missing.code == 2
    assert "SCX_REFRESH_TOKEN or SCX_REFRESH_TOKEN_FILE is required" in missing.err


async def test_events_checks_report_the_unrouted_queue_and_who_holds_the_lock(
    declared: None, names: Names, emulator: Emulator, amqp: AbstractRobustConnection
) -> None:
    events_env = {
        "EVENTS_UNROUTED_QUEUE": f"{names.queue}.unrouted",
        "EVENTS_LOCK_NAME": f"{names.queue}.lock",
    }
    plain = await check(names, emulator, **events_env)
    assert "unrouted" not in lines(plain)

    nobody = await cli(names, "check", "--events", **api_env(emulator, **events_env))
    assert nobody.code == 0, nobody.out + nobody.err
    assert lines(nobody)["unrouted"] == "warn"
    assert lines(nobody)["events"] == "warn"
    assert "no events bridge is polling" in nobody.out

    holder = await amqp.channel()  # what a running bridge holds
    await holder.declare_queue(f"{names.queue}.lock", exclusive=True)
    kept = await holder.declare_queue(f"{names.queue}.unrouted", durable=True)
    try:
        held = await cli(names, "check", "--events", **api_env(emulator, **events_env))
        assert held.code == 0, held.out + held.err
        assert lines(held)["unrouted"] == "ok"
        assert lines(held)["events"] == "ok"
        assert "an events bridge is polling" in held.out
    finally:
        await kept.delete()
        await holder.close()


async def test_a_node_of_the_list_that_does_not_answer_is_a_warning(
    declared: None, names: Names, emulator: Emulator
) -> None:
    dead = "amqp://someone:hunter2@127.0.0.1:1/"
    result = await check(names, emulator, AMQP_URL=f"{AMQP_URL},{dead}")
    assert result.code == 0, result.out + result.err
    report = lines(result)
    assert report["broker"] == "ok"
    assert report["nodes"] == "warn"
    assert "1 of 2 answer; not: amqp://someone:***@127.0.0.1:1/" in result.out
    assert "hunter2" not in result.out + result.err
