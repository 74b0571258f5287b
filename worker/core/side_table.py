"""The optional Redis side-table (``WORKER_STATE_REDIS_URL``): one way to open it.

Both users (the forwarder's progress record, the bridge's delivery counts) treat Redis as a
side-table that must never hold up the work for long: a short timeout per operation and no
retries of redis-py's own (theirs decide), and the same errors count as "Redis did not answer".
redis-py is imported only here and only when called: it loads OpenTelemetry whenever that is
installed, which a process without the record (or with tracing off) must not carry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import SecretStr

if TYPE_CHECKING:
    from redis.asyncio import Redis


def open_side_table(url: SecretStr, timeout: float) -> tuple[Redis, tuple[type[Exception], ...]]:
    """A client for ``url`` with ``timeout`` seconds per operation, and the errors that mean
    it did not answer."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import RedisError

    client = Redis.from_url(
        url.get_secret_value(),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return client, (RedisError, OSError)
