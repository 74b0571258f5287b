"""``scx-forwarder check``: can this configuration run here? A deploy pipeline's smoke step.

It checks, in order, and prints one line per check:

- **config**: the settings parse, a refresh token is readable, ``WORKER_MAPPER`` imports.
  A bad configuration raises ``ConfigError`` before anything is contacted (exit 2, as
  for ``run``);
- **broker**: a connection with the configured URL and credentials;
- **nodes** (``AMQP_URL`` listing several): every other node connected to once; one that
  does not answer is a warning (the worker would skip it, but it is no failover target);
- **exchange / queue / dlq / retry queues**: each looked up with a *passive* declare, so
  nothing is created or changed; a missing one is a warning (``run`` declares it), and
  the work queue and DLQ report their ready messages and consumers;
- **token**: one ``POST /v1/auth`` with the refresh token (one call of the route's
  budget); the token itself is never printed;
- **state** (only with ``WORKER_STATE_REDIS_URL``): a ``PING`` to the progress record's
  Redis with the configured credentials; unreachable or refused is a failure, since the
  worker would then delay every ticket with attachments (it never skips a step on a guess);
- with ``--events`` (the events bridge's pipeline), also **unrouted**: the
  ``EVENTS_UNROUTED_QUEUE`` looked up passively, with the messages kept there, and **events
  lock**: whether a bridge holds ``EVENTS_LOCK_NAME`` now (a passive declare of another
  connection's exclusive queue is refused as "locked"), a warning if none does. It never
  polls ``GET /v1/channel/event``: a poll would hide the events it returns for minutes.

Exit 0 when no check failed (warnings allowed), 1 when one did. Not checked: whether
an existing queue's arguments match what the worker would declare (``run`` exits 1 with
``worker.topology_mismatch`` then), and bindings (AMQP cannot look them up passively).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import aio_pika
import aiormq
import httpx
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection
from pamqp.common import FieldTable
from pydantic import SecretStr
from yarl import URL

from worker.amqp import broker
from worker.core.retry import is_transient_status
from worker.core.settings import ConfigError, Settings, redact_url
from worker.scx import auth_request

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Result:
    name: str
    status: Status
    detail: str


def check_config(settings: Settings) -> tuple[SecretStr, Result]:
    """The parts of the configuration ``load_settings`` cannot judge; ``ConfigError`` if bad."""
    refresh_token = settings.refresh_token()
    if settings.worker_mapper:
        from worker.forward.mapping import load_mapper

        try:
            load_mapper(settings.worker_mapper)
        except ValueError as exc:
            raise ConfigError(f"WORKER_MAPPER: {exc}") from None
    detail = (
        f"queue {settings.amqp_queue!r} ({settings.amqp_queue_type}), "
        f"API {settings.scx_api_url}, broker {settings.amqp_url_redacted}"
    )
    return refresh_token, Result("config", "ok", detail)


async def run_checks(
    settings: Settings, refresh_token: SecretStr, *, events: bool = False
) -> list[Result]:
    """Every check after the configuration's, in the order they are printed."""
    results = await check_broker(settings, events=events)
    if settings.worker_state_redis_url is not None:
        results.append(await check_state_record(settings))
    results.append(await check_token(settings, refresh_token))
    return results


async def check_state_record(settings: Settings) -> Result:
    """A ``PING`` to the progress record's Redis (``WORKER_STATE_REDIS_URL``)."""
    assert settings.worker_state_redis_url is not None
    # Imported here, as in worker.forward.progress: only a configuration with the record needs it.
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    where = settings.state_redis_url_redacted
    client: Redis = Redis.from_url(
        settings.worker_state_redis_url.get_secret_value(),
        socket_connect_timeout=broker.CONNECT_TIMEOUT,
        socket_timeout=broker.CONNECT_TIMEOUT,
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        return Result("state", "fail", f"cannot use {where}: {_safe_error(exc, settings)}")
    finally:
        await client.aclose()
    return Result("state", "ok", f"{where} answers PING")


async def check_broker(settings: Settings, *, events: bool = False) -> list[Result]:
    try:
        connection = await broker.connect(settings, "check")
    except broker.CONNECT_ERRORS as exc:
        return [
            Result(
                "broker",
                "fail",
                f"cannot connect to {settings.amqp_url_redacted}: {_safe_error(exc, settings)}",
            )
        ]
    nodes = settings.amqp_nodes
    where = f" (node {nodes.index(connection.url) + 1} of {len(nodes)})" if len(nodes) > 1 else ""
    results = [Result("broker", "ok", f"connected to {redact_url(connection.url)}{where}")]
    async with connection:
        if len(nodes) > 1:
            results.append(await _other_nodes(settings, connection.url))
        results.append(await _exchange(connection, settings.amqp_exchange))
        results.append(await _queue(connection, "queue", settings.amqp_queue))
        results.append(await _queue(connection, "dlq", settings.dead_letter_queue))
        for name in settings.retry_queues:
            results.append(await _queue(connection, "retry queue", name, counts=False))
        if events:
            results.append(await _queue(connection, "unrouted", settings.events_unrouted_queue))
            results.append(await _events_lock(connection, settings.events_lock_name))
    return results


async def _events_lock(connection: AbstractConnection, name: str) -> Result:
    """Whether some events bridge holds the lock (its exclusive queue) right now."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelLockedResource:
        return Result("events lock", "ok", f"{name!r} is held: an events bridge is polling")
    except aiormq.exceptions.ChannelNotFoundEntity:
        return Result(
            "events lock", "warn", f"{name!r} is not held: no events bridge is polling now"
        )
    finally:
        if not channel.is_closed:
            await channel.close()
    # Declared passively by us: a queue of that name that is not exclusive to a bridge.
    return Result("events lock", "fail", f"{name!r} exists but is not a bridge's lock")


async def _other_nodes(settings: Settings, connected: URL) -> Result:
    """Each other node of the list, connected to once: a typo there shows only at failover."""
    silent = []
    for node in settings.amqp_nodes:
        if node == connected:
            continue
        properties: FieldTable = {"connection_name": broker.connection_name(settings, "check")}
        connection = aio_pika.Connection(node, client_properties=properties)
        try:
            await connection.connect(timeout=broker.CONNECT_TIMEOUT)
        except broker.CONNECT_ERRORS as exc:
            silent.append(f"{redact_url(node)} ({_safe_error(exc, settings)})")
            continue
        finally:
            # Closed on failure too: a node that accepted the socket but refused the login
            # would otherwise leave it to the garbage collector.
            await connection.close()
    nodes = len(settings.amqp_nodes)
    if silent:
        detail = f"{nodes - len(silent)} of {nodes} answer; not: " + ", ".join(silent)
        return Result("nodes", "warn", detail)
    return Result("nodes", "ok", f"all {nodes} answer")


async def check_token(settings: Settings, refresh_token: SecretStr) -> Result:
    """Trade the refresh token for an access token once; report only how that went."""
    url = f"{settings.scx_api_url}/v1/auth"
    timeout = httpx.Timeout(settings.scx_request_timeout, connect=settings.scx_connect_timeout)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.send(auth_request(url, refresh_token, timeout))
    except httpx.HTTPError as exc:
        return Result("token", "fail", f"cannot reach {url}: {type(exc).__name__}")
    status = response.status_code
    if status < 300:
        return Result("token", "ok", f"obtained from {url}{_lifetime(response.content)}")
    if is_transient_status(status):
        return Result("token", "fail", f"POST {url} answered HTTP {status} (try again later)")
    return Result(
        "token",
        "fail",
        f"the API refused the refresh token (HTTP {status}); "
        "check SCX_REFRESH_TOKEN / SCX_REFRESH_TOKEN_FILE",
    )


def render(results: list[Result]) -> str:
    """The report: one line per check, then the verdict."""
    lines = [f"  {r.status:<5} {r.name:<12} {r.detail}" for r in results]
    failed = sum(r.status == "fail" for r in results)
    warned = sum(r.status == "warn" for r in results)
    verdict = f"check failed: {failed} of {len(results)} checks" if failed else "check passed"
    if warned:
        verdict += f" ({warned} warning{'s' if warned > 1 else ''})"
    return "\n".join([*lines, verdict])


def passed(results: list[Result]) -> bool:
    return all(r.status != "fail" for r in results)


async def _exchange(connection: AbstractConnection, name: str) -> Result:
    async def declare(channel: AbstractChannel) -> str:
        await channel.declare_exchange(name, passive=True)
        return repr(name)

    return await _passive(connection, "exchange", name, declare)


async def _queue(
    connection: AbstractConnection, label: str, name: str, *, counts: bool = True
) -> Result:
    async def declare(channel: AbstractChannel) -> str:
        queue = await channel.declare_queue(name, passive=True)
        if not counts:
            return repr(name)
        declared = queue.declaration_result
        consumers = declared.consumer_count or 0
        return (
            f"{name!r}: {declared.message_count} ready, "
            f"{consumers} consumer{'' if consumers == 1 else 's'}"
        )

    return await _passive(connection, label, name, declare)


async def _passive(
    connection: AbstractConnection,
    label: str,
    name: str,
    declare: Callable[[AbstractChannel], Awaitable[str]],
) -> Result:
    """Run one passive declare on a channel of its own (a 404 closes the channel)."""
    channel = await connection.channel()
    try:
        return Result(label, "ok", await declare(channel))
    except aiormq.exceptions.ChannelNotFoundEntity:
        return Result(label, "warn", f"{name!r} does not exist yet (run declares it)")
    except aiormq.exceptions.ChannelAccessRefused:
        return Result(label, "fail", f"{name!r}: access refused for this broker user")
    finally:
        if not channel.is_closed:
            await channel.close()


def _lifetime(content: bytes) -> str:
    try:
        payload = orjson.loads(content)
        seconds = float(payload["expiresIn"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return ""
    return f", expires in {seconds:.0f} s"


def _safe_error(exc: BaseException, settings: Settings) -> str:
    """The error's type and text, with the broker password blanked should it appear."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return settings.scrub(text)


async def check(settings: Settings, *, events: bool = False) -> tuple[bool, str]:
    """All checks; ``(passed, report)``. Raises ``ConfigError`` for a bad configuration."""
    refresh_token, config = check_config(settings)
    results = [config, *await run_checks(settings, refresh_token, events=events)]
    return passed(results), render(results)
