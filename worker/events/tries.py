"""How often the bridge failed to publish a seller event as it should: SCX's 10-delivery cap.

SCX transmits an unacknowledged event again after its visibility timeout (about 5 minutes),
**at most 10 times**; then it marks the event dead-letter and never sends it again (JTL's
guide, "Events"). Every poll that returns it counts. So the bridge cannot leave an event
unacknowledged "until things get better": it counts, per event id, the deliveries that ended
without an acknowledgement because of the event itself, and at ``EVENTS_DELIVERY_TRIES``
(3 by default, well under 10) publishes what it can (``worker.events.bridge`` says what):

===========================  =============================================================
what failed                  what the count decides
===========================  =============================================================
a reply's file download      below the tries: not acknowledged, SCX delivers it again; at
(transient: 5xx, timeout)    the tries: the reply is published with that file marked not
                             delivered (status, last error, how to fetch it later)
the broker refused a         below the tries: not acknowledged; at the tries: a copy goes
message (nack)               to ``EVENTS_UNROUTED_QUEUE`` (``x-error-kind: refused``)
===========================  =============================================================

The count lives in this process (``DeliveryTries``) and, with ``WORKER_STATE_REDIS_URL``
set, also in Redis under ``<WORKER_STATE_KEY_PREFIX>:events:tries:<event id>`` (``INCR``,
kept ``WORKER_STATE_TTL`` seconds), so a restart or a standby taking over goes on counting.
Redis is a side-table here: when it does not answer, the count of this process is used (and
a warning logged); the count can then only be too low, which costs deliveries, never an
event published too early. Only failures touch Redis, and a count is dropped once the event
is acknowledged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog

from worker.core.settings import Settings
from worker.core.side_table import open_side_table

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = structlog.get_logger(__name__)

# SCX's own cap (JTL's guide, "Events"): deliveries of one event before it is given up.
SCX_MAX_DELIVERIES = 10
# Seconds a polled, unacknowledged event stays invisible before SCX delivers it again (the
# seller-side twin documents 5 minutes; the channel side does not say).
SCX_VISIBILITY_TIMEOUT = 300
# Per Redis operation: the count must never hold up a page for long.
_TIMEOUT = 1.0


class DeliveryTries:
    """Failed deliveries per event id: in this process, and in Redis when configured."""

    def __init__(self, settings: Settings) -> None:
        self.limit = settings.events_delivery_tries
        self._local: Counter[str] = Counter()
        self._redis: Redis | None = None
        self._failures: tuple[type[Exception], ...] = (OSError,)
        self._prefix = f"{settings.worker_state_key_prefix}:events:tries:"
        self._ttl = settings.worker_state_ttl
        self._where = settings.state_redis_url_redacted
        if settings.worker_state_redis_url is not None:
            self._redis, self._failures = open_side_table(settings.worker_state_redis_url, _TIMEOUT)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def failed(self, event_id: str) -> int:
        """Count one more delivery of ``event_id`` that ended unacknowledged; returns the
        count so far (across restarts with Redis)."""
        self._local[event_id] += 1
        count = self._local[event_id]
        if self._redis is not None:
            key = self._prefix + event_id
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.incr(key)
                    pipe.expire(key, self._ttl)
                    recorded: list[Any] = await pipe.execute()
            except self._failures as exc:
                self._unavailable("count", exc)
            else:
                count = max(count, int(recorded[0]))
        return count

    def exhausted(self, count: int) -> bool:
        """Whether ``count`` failed deliveries are all the bridge waits for."""
        return count >= self.limit

    async def forget(self, event_ids: Iterable[str]) -> None:
        """The events are acknowledged: their counts are no longer needed."""
        known = [event_id for event_id in event_ids if self._local.pop(event_id, None)]
        if self._redis is None or not known:
            return
        try:
            await self._redis.delete(*(self._prefix + event_id for event_id in known))
        except self._failures as exc:
            self._unavailable("forget", exc)  # the keys expire on their own

    def _unavailable(self, operation: str, exc: Exception) -> None:
        log.warning(
            "events.tries_record_unavailable",
            operation=operation,
            redis=self._where,
            error=f"{type(exc).__name__}: {exc}",
            detail="counting in this process only",
        )
